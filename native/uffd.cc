// Dirty-page tracking without soft-dirty: asynchronous userfaultfd write-protection and the
// PAGEMAP_SCAN ioctl of /proc/PID/pagemap (Documentation/admin-guide/mm/userfaultfd.rst,
// "Write Protect Notifications", and Documentation/admin-guide/mm/pagemap.rst, "PAGEMAP_SCAN").
//
// Wraps ioctl(2) UFFDIO_API, UFFDIO_REGISTER, UFFDIO_UNREGISTER on a userfaultfd and
// PAGEMAP_SCAN on a pagemap file. The userfaultfd belongs to the mm it was created in, so the
// caller creates it inside the target (an injected userfaultfd(2)) and takes it with
// pidfd_getfd(2); these ioctls then act on the target's mm from outside.
//
// With UFFD_FEATURE_WP_ASYNC a write to a write-protected page is resolved by the kernel
// itself (the protection is dropped and the page counts as written): nobody reads the
// userfaultfd, and a task writing never blocks. With UFFD_FEATURE_WP_UNPOPULATED anonymous
// areas may carry markers, which PAGEMAP_SCAN needs to write-protect them at all
// (userfaultfd_wp_use_markers()). Closing the last reference to the userfaultfd unregisters
// every area (userfaultfd_release()); a protection bit left on a page of an area no longer
// registered is ignored by the fault path (userfaultfd_pte_wp() needs the area's VM_UFFD_WP).
//
// Debian 12's headers (6.1) lack PAGEMAP_SCAN and the two features: they are defined here
// from the kernel's include/uapi/linux/fs.h and userfaultfd.h.
#include <napi.h>

#include <errno.h>
#include <linux/userfaultfd.h>
#include <sys/ioctl.h>

#include <vector>

#include "errors.h"

#ifndef UFFD_FEATURE_WP_UNPOPULATED
#define UFFD_FEATURE_WP_UNPOPULATED (1 << 13)
#endif
#ifndef UFFD_FEATURE_WP_ASYNC
#define UFFD_FEATURE_WP_ASYNC (1 << 15)
#endif

namespace ferry {
namespace {

struct page_region {
  uint64_t start, end, categories;
};

struct pm_scan_arg {
  uint64_t size, flags, start, end, walk_end, vec, vec_len, max_pages, category_inverted, category_mask,
      category_anyof_mask, return_mask;
};

#define FERRY_PAGEMAP_SCAN _IOWR('f', 16, struct pm_scan_arg)

// uffdApi(fd, features) -> the features the kernel offers (UFFDIO_API, asking for `features`).
// EINVAL: a feature asked for is not known to this kernel.
Napi::Value UffdApi(const Napi::CallbackInfo& info) {
  int64_t fd;
  uint64_t features;
  if (!ArgInt(info, 0, &fd) || !ArgU64(info, 1, &features)) return {};
  struct uffdio_api api = {};
  api.api = UFFD_API;
  api.features = features;
  if (ioctl(static_cast<int>(fd), UFFDIO_API, &api) < 0) {
    ThrowErrno(info.Env(), "ioctl(UFFDIO_API)", errno);
    return {};
  }
  return Napi::BigInt::New(info.Env(), static_cast<uint64_t>(api.features));
}

// uffdRegister(fd, start, len, mode) -> the ioctls the range supports (UFFDIO_REGISTER).
// mode: UFFDIO_REGISTER_MODE_MISSING 1, _WP 2, _MINOR 4. EBUSY: another userfaultfd has the
// area; EINVAL: an area that cannot be registered (or a hole in the range); EPERM: a shared
// area without VM_MAYWRITE.
Napi::Value UffdRegister(const Napi::CallbackInfo& info) {
  int64_t fd;
  uint64_t start, len, mode;
  if (!ArgInt(info, 0, &fd) || !ArgU64(info, 1, &start) || !ArgU64(info, 2, &len) || !ArgU64(info, 3, &mode)) return {};
  struct uffdio_register reg = {};
  reg.range.start = start;
  reg.range.len = len;
  reg.mode = mode;
  if (ioctl(static_cast<int>(fd), UFFDIO_REGISTER, &reg) < 0) {
    ThrowErrno(info.Env(), "ioctl(UFFDIO_REGISTER)", errno);
    return {};
  }
  return Napi::BigInt::New(info.Env(), static_cast<uint64_t>(reg.ioctls));
}

// uffdUnregister(fd, start, len) (UFFDIO_UNREGISTER): the range's protection is dropped.
Napi::Value UffdUnregister(const Napi::CallbackInfo& info) {
  int64_t fd;
  uint64_t start, len;
  if (!ArgInt(info, 0, &fd) || !ArgU64(info, 1, &start) || !ArgU64(info, 2, &len)) return {};
  struct uffdio_range range = {start, len};
  if (ioctl(static_cast<int>(fd), UFFDIO_UNREGISTER, &range) < 0) {
    ThrowErrno(info.Env(), "ioctl(UFFDIO_UNREGISTER)", errno);
    return {};
  }
  return info.Env().Undefined();
}

// pagemapScan(fd, start, end, flags, categoryMask, returnMask, maxRegions)
//   -> { regions: BigUint64Array [start, end, categories] x n, walkEnd: bigint }
// One PAGEMAP_SCAN call over [start, end) of the pagemap `fd`: the regions whose pages have
// every category of `categoryMask`, with `returnMask` of their categories. It stops early
// (walkEnd < end) when `maxRegions` are full; with PM_SCAN_WP_MATCHING (1) only the pages up
// to walkEnd were write-protected again, so the caller continues from walkEnd.
Napi::Value PagemapScan(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int64_t fd, maxRegions;
  uint64_t start, end, flags, categoryMask, returnMask;
  if (!ArgInt(info, 0, &fd) || !ArgU64(info, 1, &start) || !ArgU64(info, 2, &end) || !ArgU64(info, 3, &flags) ||
      !ArgU64(info, 4, &categoryMask) || !ArgU64(info, 5, &returnMask) || !ArgInt(info, 6, &maxRegions)) return {};
  if (maxRegions < 1 || maxRegions > (1 << 20)) {
    ThrowType(env, "pagemapScan: maxRegions must be 1..1048576");
    return {};
  }
  std::vector<page_region> vec(static_cast<size_t>(maxRegions));
  struct pm_scan_arg arg = {};
  arg.size = sizeof arg;
  arg.flags = flags;
  arg.start = start;
  arg.end = end;
  arg.vec = reinterpret_cast<uint64_t>(vec.data());
  arg.vec_len = vec.size();
  arg.category_mask = categoryMask;
  arg.return_mask = returnMask;
  long n = ioctl(static_cast<int>(fd), FERRY_PAGEMAP_SCAN, &arg);
  if (n < 0) {
    ThrowErrno(env, "ioctl(PAGEMAP_SCAN)", errno);
    return {};
  }
  auto out = Napi::TypedArrayOf<uint64_t>::New(env, static_cast<size_t>(n) * 3, napi_biguint64_array);
  uint64_t* o = out.Data();
  for (size_t i = 0; i < static_cast<size_t>(n); i++) {
    o[i * 3] = vec[i].start;
    o[i * 3 + 1] = vec[i].end;
    o[i * 3 + 2] = vec[i].categories;
  }
  Napi::Object r = Napi::Object::New(env);
  r.Set("regions", out);
  r.Set("walkEnd", Napi::BigInt::New(env, static_cast<uint64_t>(arg.walk_end)));
  return r;
}

}  // namespace

void InitUffd(Napi::Env env, Napi::Object exports) {
  exports.Set("uffdApi", Napi::Function::New(env, UffdApi));
  exports.Set("uffdRegister", Napi::Function::New(env, UffdRegister));
  exports.Set("uffdUnregister", Napi::Function::New(env, UffdUnregister));
  exports.Set("pagemapScan", Napi::Function::New(env, PagemapScan));
}

}  // namespace ferry
