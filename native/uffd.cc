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
// Lazy pages (src/restore/lazy.ts): a userfaultfd in MISSING mode, made inside each restored
// process and taken out the same way, is served from ferry: uffdWatch(2) wakes the JS thread
// through libuv when the descriptor is readable (uv_poll_t on the event loop: no thread of
// ours), uffdReadEvents reads the queued messages (page faults, and the non-cooperative
// events: fork, mremap, munmap, madvise), and UFFDIO_COPY / UFFDIO_ZEROPAGE resolve a fault
// and wake the threads waiting on it.
//
// Debian 12's headers (6.1) lack PAGEMAP_SCAN and the two features: they are defined here
// from the kernel's include/uapi/linux/fs.h and userfaultfd.h.
#include <napi.h>

#include <errno.h>
#include <linux/userfaultfd.h>
#include <sys/ioctl.h>
#include <stdlib.h>
#include <unistd.h>

#include <vector>

#include "errors.h"

#ifndef UFFD_FEATURE_WP_UNPOPULATED
#define UFFD_FEATURE_WP_UNPOPULATED (1 << 13)
#endif
#ifndef UFFD_FEATURE_WP_ASYNC
#define UFFD_FEATURE_WP_ASYNC (1 << 15)
#endif

// The few libuv calls uffdWatch needs (libuv 1.x's stable ABI; the headers node-api-headers
// installs have no uv.h). A poll handle is allocated by its runtime size (uv_handle_size), and
// its first field is `void* data` (UV_HANDLE_FIELDS).
extern "C" {
typedef struct uv_loop_s uv_loop_t;
typedef struct uv_handle_s uv_handle_t;
typedef struct uv_poll_s uv_poll_t;
typedef void (*uv_poll_cb)(uv_poll_t* handle, int status, int events);
typedef void (*uv_close_cb)(uv_handle_t* handle);
size_t uv_handle_size(int type);
int uv_poll_init(uv_loop_t* loop, uv_poll_t* handle, int fd);
int uv_poll_start(uv_poll_t* handle, int events, uv_poll_cb cb);
int uv_poll_stop(uv_poll_t* handle);
void uv_close(uv_handle_t* handle, uv_close_cb close_cb);
}
#define FERRY_UV_POLL 8      // UV_POLL of uv_handle_type
#define FERRY_UV_READABLE 1  // UV_READABLE of uv_poll_event

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

// pagemapScan(fd, start, end, flags, categoryMask, returnMask, maxRegions[, anyofMask])
//   -> { regions: BigUint64Array [start, end, categories] x n, walkEnd: bigint }
// One PAGEMAP_SCAN call over [start, end) of the pagemap `fd`: the regions whose pages have
// every category of `categoryMask` and, when `anyofMask` is not 0, at least one of its
// categories, with `returnMask` of their categories. It stops early
// (walkEnd < end) when `maxRegions` are full; with PM_SCAN_WP_MATCHING (1) only the pages up
// to walkEnd were write-protected again, so the caller continues from walkEnd.
Napi::Value PagemapScan(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int64_t fd, maxRegions;
  uint64_t start, end, flags, categoryMask, returnMask;
  if (!ArgInt(info, 0, &fd) || !ArgU64(info, 1, &start) || !ArgU64(info, 2, &end) || !ArgU64(info, 3, &flags) ||
      !ArgU64(info, 4, &categoryMask) || !ArgU64(info, 5, &returnMask) || !ArgInt(info, 6, &maxRegions)) return {};
  uint64_t anyofMask = 0;
  if (info.Length() > 7 && !ArgU64(info, 7, &anyofMask)) return {};
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
  arg.category_anyof_mask = anyofMask;
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

// uffdReadEvents(fd) -> BigUint64Array of [event, a, b, c] per message read, none when
// nothing is queued (EAGAIN: the descriptor is O_NONBLOCK). event is the UFFD_EVENT_* number:
// PAGEFAULT 0x12 [flags, address], FORK 0x13 [the child's new userfaultfd, now a descriptor
// of ferry's], REMAP 0x14 [from, to, len], REMOVE 0x15 and UNMAP 0x16 [start, end].
Napi::Value UffdReadEvents(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int64_t fd;
  if (!ArgInt(info, 0, &fd)) return {};
  struct uffd_msg msgs[64];
  ssize_t n;
  do {
    n = read(static_cast<int>(fd), msgs, sizeof msgs);
  } while (n < 0 && errno == EINTR);
  if (n < 0 && errno != EAGAIN) {
    ThrowErrno(env, "read(userfaultfd)", errno);
    return {};
  }
  size_t count = n > 0 ? static_cast<size_t>(n) / sizeof msgs[0] : 0;
  auto out = Napi::TypedArrayOf<uint64_t>::New(env, count * 4, napi_biguint64_array);
  uint64_t* o = out.Data();
  for (size_t i = 0; i < count; i++) {
    const struct uffd_msg& m = msgs[i];
    o[i * 4] = m.event;
    o[i * 4 + 1] = o[i * 4 + 2] = o[i * 4 + 3] = 0;
    switch (m.event) {
      case UFFD_EVENT_PAGEFAULT: o[i * 4 + 1] = m.arg.pagefault.flags; o[i * 4 + 2] = m.arg.pagefault.address; break;
      case UFFD_EVENT_FORK: o[i * 4 + 1] = m.arg.fork.ufd; break;
      case UFFD_EVENT_REMAP: o[i * 4 + 1] = m.arg.remap.from; o[i * 4 + 2] = m.arg.remap.to; o[i * 4 + 3] = m.arg.remap.len; break;
      case UFFD_EVENT_REMOVE:
      case UFFD_EVENT_UNMAP: o[i * 4 + 1] = m.arg.remove.start; o[i * 4 + 2] = m.arg.remove.end; break;
      default: break;
    }
  }
  return out;
}

// uffdCopy(fd, dst, buf) -> { copied, exists, again } (UFFDIO_COPY of `buf`, whole pages, to
// `dst`, waking the threads that wait on the range). The kernel stops at the first page
// already present: `exists` is then true and `copied` counts the bytes before it (the caller
// goes on after that page). EAGAIN (the mm is changing: an event waits to be read first)
// returns with `again` true. ESRCH: the mm is gone; ENOENT: the range is not inside one
// registered area (split, moved or unmapped).
Napi::Value UffdCopy(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int64_t fd;
  uint64_t dst;
  if (!ArgInt(info, 0, &fd) || !ArgU64(info, 1, &dst)) return {};
  if (info.Length() < 3 || !info[2].IsBuffer()) {
    ThrowType(env, "uffdCopy: buf must be a Buffer");
    return {};
  }
  auto buf = info[2].As<Napi::Buffer<uint8_t>>();
  uint64_t done = 0;
  bool exists = false;
  bool again = false;
  while (done < buf.Length()) {
    struct uffdio_copy c = {};
    c.dst = dst + done;
    c.src = reinterpret_cast<uint64_t>(buf.Data()) + done;
    c.len = buf.Length() - done;
    if (ioctl(static_cast<int>(fd), UFFDIO_COPY, &c) == 0) {
      done += c.len;
      break;
    }
    int err = errno;
    if (c.copy > 0) done += static_cast<uint64_t>(c.copy);
    if (err == EAGAIN) {
      // The mm is changing: an event (fork, mremap, madvise, munmap) waits to be read, and
      // only the caller can read it. Retrying here would spin while the process that caused
      // it waits for us: the caller reads the events and tries again.
      again = true;
      break;
    }
    if (err == EEXIST) {
      exists = true;
      break;
    }
    ThrowErrno(env, "ioctl(UFFDIO_COPY)", err);
    return {};
  }
  Napi::Object r = Napi::Object::New(env);
  r.Set("copied", Napi::Number::New(env, static_cast<double>(done)));
  r.Set("exists", Napi::Boolean::New(env, exists));
  r.Set("again", Napi::Boolean::New(env, again));
  return r;
}

// uffdZeropage(fd, dst, len) -> 1: done; 0: a page of the range was present already (EEXIST);
// -1: the mm is changing (EAGAIN: read the events, then try again) (UFFDIO_ZEROPAGE: the range
// maps the zero page, the waiting threads are woken).
Napi::Value UffdZeropage(const Napi::CallbackInfo& info) {
  int64_t fd;
  uint64_t dst, len;
  if (!ArgInt(info, 0, &fd) || !ArgU64(info, 1, &dst) || !ArgU64(info, 2, &len)) return {};
  struct uffdio_zeropage z = {};
  z.range.start = dst;
  z.range.len = len;
  if (ioctl(static_cast<int>(fd), UFFDIO_ZEROPAGE, &z) == 0) return Napi::Number::New(info.Env(), 1);
  if (errno == EAGAIN) return Napi::Number::New(info.Env(), -1);
  if (errno == EEXIST) return Napi::Number::New(info.Env(), 0);
  ThrowErrno(info.Env(), "ioctl(UFFDIO_ZEROPAGE)", errno);
  return {};
}

// One watched userfaultfd: a libuv poll handle on the JS thread's loop and its callback.
struct Watch {
  uv_poll_t* poll;
  Napi::FunctionReference callback;
  Napi::Env env;
  explicit Watch(Napi::Env e) : poll(nullptr), env(e) {}
};

void CloseWatch(Watch* w) {
  uv_close(reinterpret_cast<uv_handle_t*>(w->poll), [](uv_handle_t* h) {
    Watch* owner = *reinterpret_cast<Watch**>(h);
    free(h);
    delete owner;
  });
}

void OnReadable(uv_poll_t* handle, int status, int) {
  Watch* w = *reinterpret_cast<Watch**>(handle);
  Napi::HandleScope scope(w->env);
  w->callback.MakeCallback(w->env.Global(), {Napi::Number::New(w->env, status)});
}

// uffdWatch(fd, callback) -> a handle for uffdUnwatch. `callback(status)` runs on the JS
// thread whenever `fd` is readable (uv_poll_start, UV_READABLE); status < 0 is a libuv error.
// The handle keeps the event loop alive until unwatched.
Napi::Value UffdWatch(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int64_t fd;
  if (!ArgInt(info, 0, &fd)) return {};
  if (info.Length() < 2 || !info[1].IsFunction()) {
    ThrowType(env, "uffdWatch: callback must be a function");
    return {};
  }
  uv_loop_t* loop = nullptr;
  if (napi_get_uv_event_loop(env, reinterpret_cast<struct uv_loop_s**>(&loop)) != napi_ok || loop == nullptr) {
    ThrowType(env, "uffdWatch: no event loop");
    return {};
  }
  void* mem = calloc(1, uv_handle_size(FERRY_UV_POLL));
  if (mem == nullptr) {
    ThrowErrno(env, "malloc", ENOMEM);
    return {};
  }
  Watch* w = new Watch(env);
  w->poll = static_cast<uv_poll_t*>(mem);
  w->callback = Napi::Persistent(info[1].As<Napi::Function>());
  int r = uv_poll_init(loop, w->poll, static_cast<int>(fd));
  if (r != 0) {
    free(mem);
    delete w;
    ThrowErrno(env, "uv_poll_init", -r);
    return {};
  }
  *reinterpret_cast<Watch**>(w->poll) = w;  // handle->data
  r = uv_poll_start(w->poll, FERRY_UV_READABLE, OnReadable);
  if (r != 0) {
    CloseWatch(w);
    ThrowErrno(env, "uv_poll_start", -r);
    return {};
  }
  return Napi::External<Watch>::New(env, w);
}

// uffdUnwatch(handle): stops watching and frees the handle (its callback never runs again).
Napi::Value UffdUnwatch(const Napi::CallbackInfo& info) {
  if (info.Length() < 1 || !info[0].IsExternal()) {
    ThrowType(info.Env(), "uffdUnwatch: not a watch handle");
    return {};
  }
  Watch* w = info[0].As<Napi::External<Watch>>().Data();
  uv_poll_stop(w->poll);
  CloseWatch(w);
  return info.Env().Undefined();
}

}  // namespace

void InitUffd(Napi::Env env, Napi::Object exports) {
  exports.Set("uffdApi", Napi::Function::New(env, UffdApi));
  exports.Set("uffdRegister", Napi::Function::New(env, UffdRegister));
  exports.Set("uffdUnregister", Napi::Function::New(env, UffdUnregister));
  exports.Set("pagemapScan", Napi::Function::New(env, PagemapScan));
  exports.Set("uffdReadEvents", Napi::Function::New(env, UffdReadEvents));
  exports.Set("uffdCopy", Napi::Function::New(env, UffdCopy));
  exports.Set("uffdZeropage", Napi::Function::New(env, UffdZeropage));
  exports.Set("uffdWatch", Napi::Function::New(env, UffdWatch));
  exports.Set("uffdUnwatch", Napi::Function::New(env, UffdUnwatch));
}

}  // namespace ferry
