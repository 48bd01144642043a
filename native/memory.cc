// Reading another process's memory in bulk.
//
// Wraps process_vm_readv(2). Needs PTRACE_MODE_ATTACH_REALCREDS over the target, not the
// tracer thread, so it may run on any thread. Writing goes through /proc/PID/mem from TS
// (FOLL_FORCE: it writes read-only and PROT_NONE pages, which process_vm_writev cannot).
#include <napi.h>

#include <errno.h>
#include <limits.h>
#include <sys/uio.h>

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

}  // namespace

void InitMemory(Napi::Env env, Napi::Object exports) {
  exports.Set("readMemory", Napi::Function::New(env, ReadMemory));
}

}  // namespace ferry
