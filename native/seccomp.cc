// Reading a stopped tracee's seccomp filters.
//
// Wraps: ptrace(PTRACE_SECCOMP_GET_FILTER) and ptrace(PTRACE_SECCOMP_GET_METADATA) (ptrace(2)).
// Both need CAP_SYS_ADMIN in the caller, a caller that is not itself in seccomp mode, and a
// tracee in a ptrace stop. Index 0 is the OLDEST filter of the thread (the kernel counts from
// the first installed one; measured on 6.18, whatever ptrace(2) says), and an index past the
// newest one fails with ENOENT. A filter is returned as the classic BPF
// program it was installed with (struct sock_filter[], 8 bytes per instruction).
//
// Thread affinity: like every ptrace request, call them on the JS thread that seized the tid.
#include <napi.h>

#include <errno.h>
#include <linux/filter.h>
#include <linux/ptrace.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <vector>

#include "errors.h"

#ifndef PTRACE_SECCOMP_GET_FILTER
#define PTRACE_SECCOMP_GET_FILTER 0x420c
#endif
#ifndef PTRACE_SECCOMP_GET_METADATA
#define PTRACE_SECCOMP_GET_METADATA 0x420d
struct seccomp_metadata {
  __u64 filter_off;
  __u64 flags;
};
#endif

namespace ferry {
namespace {

// Largest program the kernel accepts for one filter (BPF_MAXINSNS).
constexpr long kMaxInsns = 4096;

long Ptrace(long req, pid_t tid, void* addr, void* data) {
  return syscall(SYS_ptrace, req, tid, addr, data);
}

bool TidIndex(const Napi::CallbackInfo& info, pid_t* tid, uint64_t* index) {
  int64_t t, i;
  if (!ArgInt(info, 0, &t) || !ArgInt(info, 1, &i)) return false;
  if (i < 0) {
    ThrowType(info.Env(), "index must be >= 0");
    return false;
  }
  *tid = static_cast<pid_t>(t);
  *index = static_cast<uint64_t>(i);
  return true;
}

// getSeccompFilter(tid, index) -> Buffer | null: the program of filter `index` (0 = oldest);
// null when the thread has no filter with that index (ENOENT).
Napi::Value GetSeccompFilter(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  pid_t tid;
  uint64_t index;
  if (!TidIndex(info, &tid, &index)) return {};
  void* idx = reinterpret_cast<void*>(static_cast<uintptr_t>(index));
  long count = Ptrace(PTRACE_SECCOMP_GET_FILTER, tid, idx, nullptr);
  if (count < 0 && errno == ENOENT) return env.Null();
  if (count < 0) {
    ThrowErrno(env, "ptrace(PTRACE_SECCOMP_GET_FILTER)", errno, "tid " + std::to_string(tid));
    return {};
  }
  if (count == 0 || count > kMaxInsns) {
    ThrowErrno(env, "ptrace(PTRACE_SECCOMP_GET_FILTER)", EINVAL,
               "tid " + std::to_string(tid) + ": filter of " + std::to_string(count) + " instructions");
    return {};
  }
  std::vector<struct sock_filter> prog(static_cast<size_t>(count));
  long again = Ptrace(PTRACE_SECCOMP_GET_FILTER, tid, idx, prog.data());
  if (again < 0) {
    ThrowErrno(env, "ptrace(PTRACE_SECCOMP_GET_FILTER)", errno, "tid " + std::to_string(tid));
    return {};
  }
  if (again != count) {  // cannot change while the thread is stopped
    ThrowErrno(env, "ptrace(PTRACE_SECCOMP_GET_FILTER)", EAGAIN, "tid " + std::to_string(tid) + ": filter changed size");
    return {};
  }
  return Napi::Buffer<uint8_t>::Copy(env, reinterpret_cast<uint8_t*>(prog.data()), prog.size() * sizeof(prog[0]));
}

// getSeccompFlags(tid, index) -> number: the SECCOMP_FILTER_FLAG_* bits the kernel reports for
// filter `index` (only SECCOMP_FILTER_FLAG_LOG today).
Napi::Value GetSeccompFlags(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  pid_t tid;
  uint64_t index;
  if (!TidIndex(info, &tid, &index)) return {};
  struct seccomp_metadata md = {index, 0};
  if (Ptrace(PTRACE_SECCOMP_GET_METADATA, tid, reinterpret_cast<void*>(sizeof(md)), &md) < 0) {
    ThrowErrno(env, "ptrace(PTRACE_SECCOMP_GET_METADATA)", errno, "tid " + std::to_string(tid));
    return {};
  }
  return Napi::Number::New(env, static_cast<double>(md.flags));
}

}  // namespace

void InitSeccomp(Napi::Env env, Napi::Object exports) {
  exports.Set("getSeccompFilter", Napi::Function::New(env, GetSeccompFilter));
  exports.Set("getSeccompFlags", Napi::Function::New(env, GetSeccompFlags));
}

}  // namespace ferry
