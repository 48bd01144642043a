// Reading another process's memory in bulk, and sorting its pagemap entries.
//
// Wraps process_vm_readv(2). Needs PTRACE_MODE_ATTACH_REALCREDS over the target, not the
// tracer thread, so it may run on any thread. Writing goes through /proc/PID/mem from TS
// (FOLL_FORCE: it writes read-only and PROT_NONE pages, which process_vm_writev cannot).
#include <napi.h>

#include <errno.h>
#include <limits.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/uio.h>
#include <unistd.h>

#include <string>
#include <vector>

#include "errors.h"

namespace ferry {
namespace {

std::string Hex(uint64_t v) {
  char b[32];
  snprintf(b, sizeof b, "0x%llx", static_cast<unsigned long long>(v));
  return b;
}

// readMemory(pid, ranges: Float64Array [addr, len, addr, len, ...], dst: Buffer, dstOffset)
// -> bytes read (the sum of lens). Throws EFAULT naming the first address that could not be read.
Napi::Value ReadMemory(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int64_t pid, dstOff = 0;
  Napi::Buffer<uint8_t> dst;
  if (!ArgInt(info, 0, &pid)) return {};
  if (info.Length() < 2 || !info[1].IsTypedArray() ||
      info[1].As<Napi::TypedArray>().TypedArrayType() != napi_float64_array) {
    ThrowType(env, "readMemory: ranges must be a Float64Array");
    return {};
  }
  auto ranges = info[1].As<Napi::Float64Array>();
  if (!ArgBuffer(info, 2, &dst)) return {};
  if (info.Length() > 3 && !ArgInt(info, 3, &dstOff)) return {};
  size_t n = ranges.ElementLength() / 2;
  uint64_t total = 0;
  for (size_t i = 0; i < n; i++) total += static_cast<uint64_t>(ranges[2 * i + 1]);
  if (dstOff < 0 || static_cast<uint64_t>(dstOff) + total > dst.Length()) {
    ThrowType(env, "readMemory: ranges do not fit in the buffer");
    return {};
  }
  uint8_t* out = dst.Data() + dstOff;
  std::vector<struct iovec> remote;
  remote.reserve(n < IOV_MAX ? n : IOV_MAX);
  size_t i = 0;
  while (i < n) {
    remote.clear();
    size_t want = 0;
    size_t first = i;
    for (; i < n && remote.size() < IOV_MAX; i++) {
      size_t len = static_cast<size_t>(ranges[2 * i + 1]);
      remote.push_back({reinterpret_cast<void*>(static_cast<uintptr_t>(ranges[2 * i])), len});
      want += len;
    }
    struct iovec local = {out, want};
    ssize_t got = process_vm_readv(static_cast<pid_t>(pid), &local, 1, remote.data(), remote.size(), 0);
    if (got < 0) {
      ThrowErrno(env, "process_vm_readv", errno, "pid " + std::to_string(pid) + " at " +
                 Hex(static_cast<uint64_t>(ranges[2 * first])));
      return {};
    }
    if (static_cast<size_t>(got) != want) {
      // Find the range where the short read stopped.
      size_t acc = 0, j = first;
      for (; j < i; j++) {
        size_t len = static_cast<size_t>(ranges[2 * j + 1]);
        if (acc + len > static_cast<size_t>(got)) break;
        acc += len;
      }
      uint64_t at = static_cast<uint64_t>(ranges[2 * j]) + (static_cast<size_t>(got) - acc);
      ThrowErrno(env, "process_vm_readv", EFAULT, "pid " + std::to_string(pid) + " at " + Hex(at));
      return {};
    }
    out += want;
  }
  return Napi::Number::New(env, static_cast<double>(total));
}

// /proc/PID/pagemap entries (one u64 per page, proc/pagemap.ts): bit 63 present, 62 swapped,
// 61 file page or shared anonymous, 56 exclusively mapped. A frozen dump sorts every page of
// every area it stores (262144 of them for 1 GiB); done here, that costs a fraction of a
// millisecond, where a JavaScript loop run once costs milliseconds before it is optimised.
constexpr uint64_t kPresent = 1ull << 63, kSwapped = 1ull << 62, kFile = 1ull << 61, kExclusive = 1ull << 56;
// A swapped entry's type is bits 0-4 (shown to CAP_SYS_ADMIN only, 0 otherwise); type 31 is
// no swap file but a marker (SWP_PTE_MARKER, include/linux/swapops.h: the last of the 32):
// a userfaultfd write-protection on an empty entry, a guard page, a poisoned page. No page.
constexpr uint64_t kSwapType = 0x1f, kMarkerType = 0x1f;

inline bool Marker(uint64_t e) { return (e & kSwapped) != 0 && (e & kPresent) == 0 && (e & kSwapType) == kMarkerType; }
// A marker's kind is its swap offset (bits 5-54): PTE_MARKER_GUARD (bit 2) is a guard page
// (madvise MADV_GUARD_INSTALL, Linux 6.13), probed here: offset 4; a userfaultfd
// write-protection shows 1 (PTE_MARKER_UFFD_WP).
constexpr uint64_t kGuardMarker = 4ull << 5;
inline bool Guard(uint64_t e) { return Marker(e) && (e & kGuardMarker) != 0; }

inline uint64_t Entry(const uint8_t* p) {
  uint64_t e;
  memcpy(&e, p, sizeof e);  // any alignment (a view into a bigger buffer)
  return e;
}

// The runs [first, count, ...] of the entries of `info[0]` (a Buffer of pagemap entries) that
// `pick` takes, page numbers counted from the first entry, as a Float64Array.
template <typename Pick>
Napi::Value EntryRuns(const Napi::CallbackInfo& info, Pick pick) {
  Napi::Env env = info.Env();
  Napi::Buffer<uint8_t> entries;
  if (!ArgBuffer(info, 0, &entries)) return {};
  size_t n = entries.Length() / 8;
  const uint8_t* d = entries.Data();
  std::vector<double> runs;
  size_t start = SIZE_MAX;
  for (size_t i = 0; i <= n; i++) {
    bool take = i < n && pick(Entry(d + i * 8));
    if (take && start == SIZE_MAX) start = i;
    if (!take && start != SIZE_MAX) {
      runs.push_back(static_cast<double>(start));
      runs.push_back(static_cast<double>(i - start));
      start = SIZE_MAX;
    }
  }
  auto out = Napi::Float64Array::New(env, runs.size());
  if (!runs.empty()) memcpy(out.Data(), runs.data(), runs.size() * sizeof(double));
  return out;
}

// pagemapRuns(entries: Buffer, anonShared: boolean) -> Float64Array [first, count, ...]: the
// runs of pages a dump stores: present and not a file page, or swapped; with anonShared
// (shared anonymous memory, which pagemap reports as file pages) present or swapped. Never a
// marker (Marker): it holds no page.
Napi::Value PagemapRuns(const Napi::CallbackInfo& info) {
  bool anonShared = info.Length() > 1 && info[1].ToBoolean().Value();
  return EntryRuns(info, [anonShared](uint64_t e) {
    if (Marker(e)) return false;
    return anonShared ? (e & (kPresent | kSwapped)) != 0 : ((e & kPresent) != 0 && (e & kFile) == 0) || (e & kSwapped) != 0;
  });
}

// pagemapGuardRuns(entries: Buffer) -> Float64Array [first, count, ...]: the runs of guard
// pages (Guard).
Napi::Value PagemapGuardRuns(const Napi::CallbackInfo& info) { return EntryRuns(info, Guard); }

// pagemapSharedAnon(entries: Buffer) -> Uint8Array | undefined: one byte per page, 1 where the
// page is present, anonymous and not exclusively mapped (shared copy-on-write with another
// process); undefined when no page is.
Napi::Value PagemapSharedAnon(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Buffer<uint8_t> entries;
  if (!ArgBuffer(info, 0, &entries)) return {};
  size_t n = entries.Length() / 8;
  const uint8_t* d = entries.Data();
  size_t i = 0;
  auto shared = [&](size_t k) {
    uint64_t e = Entry(d + k * 8);
    return (e & kPresent) != 0 && (e & (kFile | kExclusive)) == 0;
  };
  while (i < n && !shared(i)) i++;
  if (i == n) return env.Undefined();
  auto out = Napi::Uint8Array::New(env, n);
  memset(out.Data(), 0, n);
  for (; i < n; i++) out[i] = shared(i) ? 1 : 0;
  return out;
}

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

// populate(buf: Buffer, huge) -> whether every page of `buf` is now faulted in, writable.
//
// On this VM a page's first touch costs 10-15 µs, and so does the first copy into it by the
// kernel (a read(2), process_vm_readv(2)): faulting 32 MiB in by writing a byte per page took
// 85-95 ms, where madvise(MADV_POPULATE_WRITE, Linux 5.14) takes 6-8 ms. With `huge`, the
// buffer is first advised MADV_HUGEPAGE: where it spans whole 2 MiB pages the kernel may use
// those, and the first copy into them is then as quick as any later one (4 KiB pages, faulted
// in either way, still cost 5-6 µs each at their first copy here). The whole pages of the
// buffer are advised, the partial ones at its ends too: they are its backing store's. False
// (the caller touches each page itself) where the kernel lacks it or refuses the range.
// (THP is "madvise" on this machine: without the advice no anonymous memory gets huge pages.)
bool PopulateRange(uint8_t* data, size_t len, bool huge) {
  if (len == 0) return true;
  // The whole pages the buffer spans, the partial ones at its ends too (its backing store's).
  uintptr_t page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
  uintptr_t start = reinterpret_cast<uintptr_t>(data) & ~(page - 1);
  uintptr_t end = (reinterpret_cast<uintptr_t>(data) + len + page - 1) & ~(page - 1);
  void* at = reinterpret_cast<void*>(start);
  if (huge) madvise(at, end - start, MADV_HUGEPAGE);  // advice: no huge pages is fine
  return madvise(at, end - start, MADV_POPULATE_WRITE) == 0;
}

Napi::Value Populate(const Napi::CallbackInfo& info) {
  Napi::Buffer<uint8_t> buf;
  if (!ArgBuffer(info, 0, &buf)) return {};
  bool huge = info.Length() > 1 && info[1].ToBoolean().Value();
  return Napi::Boolean::New(info.Env(), PopulateRange(buf.Data(), buf.Length(), huge));
}

// One populateLater: the madvise(2)s on a thread of libuv's pool, the buffer held (kept from
// the garbage collector) until they are done.
class PopulateWork : public Napi::AsyncWorker {
 public:
  PopulateWork(Napi::Env env, Napi::Buffer<uint8_t> buf, bool huge)
      : Napi::AsyncWorker(env, "ferry.populateLater"), deferred_(Napi::Promise::Deferred::New(env)),
        data_(buf.Data()), len_(buf.Length()), huge_(huge), bufRef_(Napi::Persistent(buf)) {}

  Napi::Promise Promise() const { return deferred_.Promise(); }

 protected:
  void Execute() override { ok_ = PopulateRange(data_, len_, huge_); }
  void OnOK() override { deferred_.Resolve(Napi::Boolean::New(Env(), ok_)); }
  void OnError(const Napi::Error& e) override { deferred_.Reject(e.Value()); }

 private:
  Napi::Promise::Deferred deferred_;
  uint8_t* data_;
  size_t len_;
  bool huge_;
  bool ok_ = false;
  Napi::Reference<Napi::Buffer<uint8_t>> bufRef_;
};

// populateLater(buf: Buffer, huge) -> Promise<boolean>: populate's work on libuv's pool, while
// this thread goes on (the buffer may be used meanwhile: faulting a page in never changes it).
Napi::Value PopulateLater(const Napi::CallbackInfo& info) {
  Napi::Buffer<uint8_t> buf;
  if (!ArgBuffer(info, 0, &buf)) return {};
  bool huge = info.Length() > 1 && info[1].ToBoolean().Value();
  auto* work = new PopulateWork(info.Env(), buf, huge);
  Napi::Promise promise = work->Promise();
  work->Queue();  // deletes itself once settled
  return promise;
}

}  // namespace

void InitMemory(Napi::Env env, Napi::Object exports) {
  exports.Set("readMemory", Napi::Function::New(env, ReadMemory));
  exports.Set("pagemapRuns", Napi::Function::New(env, PagemapRuns));
  exports.Set("pagemapGuardRuns", Napi::Function::New(env, PagemapGuardRuns));
  exports.Set("pagemapSharedAnon", Napi::Function::New(env, PagemapSharedAnon));
  exports.Set("populate", Napi::Function::New(env, Populate));
  exports.Set("populateLater", Napi::Function::New(env, PopulateLater));
}

}  // namespace ferry
