// What native/inject.cc and native/inject-blob.cc share: the ptrace helpers, a batch's
// options, and the one-round-trip runner (inject-blob.cc).
#pragma once
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/user.h>

#include <functional>

namespace ferry {
namespace inject {

long Ptrace(long req, pid_t tid, void* addr, void* data);

// Waits for the next stop of `tid`. False (errno ESRCH) when it died instead.
bool WaitStop(pid_t tid, int* status, const char** what);

// process_vm_readv(2) of `len` bytes at `addr` of `tid` into `buf`; false with errno (EFAULT
// also for a short read).
bool ReadRemote(pid_t tid, uint64_t addr, void* buf, size_t len);

// A signal-delivery-stop's signal to pass on when resuming (0 for ptrace's own stops), so
// that a SIGSTOP or SIGKILL that arrived meanwhile is not swallowed.
int PassOn(int status);

// What a batch does besides its calls.
struct BatchOptions {
  // The first `guard` calls must succeed (a result outside [-4095, -1]); at the first that
  // fails, no later call runs (their results are -ECANCELED) and nothing is read back.
  size_t guard = 0;
  // Before call `read_at` runs (n: after the last), `read_len` bytes of the task's memory at
  // `read_addr` are copied into `read_buf` (process_vm_readv(2)). Off when read_buf is null.
  size_t read_at = 0;
  uint64_t read_addr = 0;
  uint8_t* read_buf = nullptr;
  size_t read_len = 0;
  // Before call `take_at` runs (1..n), pidfd_getfd(2) copies into the caller the descriptor
  // that call `take_at - 1` returned, through `take_pidfd` (a pidfd of the task): a descriptor
  // the batch creates and closes again is the caller's alone, and a tracer that dies
  // between the two leaves it in the task no longer than the rest of the batch. Call
  // `take_at` gets that descriptor number as its first argument (it is meant to close it).
  // Off when take_pidfd < 0. The copy (or -errno) goes to `taken`.
  size_t take_at = 0;
  int take_pidfd = -1;
  int taken = -1;
  // kSeized only: calls [blob_at, blob_at + blob_count) run in one round trip (inject-blob.cc)
  // when call `blob_mapped_at` (< blob_at) returned `blob_code`, the area of `blob_code_len`
  // bytes it mapped r-x; `blob_work` is `blob_work_len` writable bytes of the task, and
  // [blob_unmap, +blob_unmap_len) what the program unmaps if it has to put the task back
  // itself, after `blob_wait_s` seconds. Else (or with TF set) they run one by one. Off when
  // blob_count is 0. `on_blob_wait`, when set, is called once the
  // calls ran, before the interrupt (the fault point of test/faults/inject.test.ts).
  size_t blob_at = 0, blob_count = 0, blob_mapped_at = 0;
  uint64_t blob_code = 0, blob_work = 0, blob_unmap = 0;
  size_t blob_code_len = 0, blob_work_len = 0, blob_unmap_len = 0;
  int blob_wait_s = 3;
  // The batch failed with the task perhaps inside the program, or running its own code again
  // after the program put it back (ferry came back too late): its memory, the scratch and code
  // areas included, must be left as it is (a signal handler may return into the program; the
  // task may have mapped something where the program unmapped ferry's data area).
  bool blob_loose = false;
  std::function<void()> on_blob_wait;
};

enum BlobResult { kBlobDone, kBlobSkipped, kBlobFailed, kBlobSelfRestored };

// kSeized: runs `count` calls through the program (inject-blob.cc). The task is in a ptrace
// stop (a syscall-exit-stop after the calls that mapped the area, or its PTRACE_EVENT_STOP)
// and every signal is blocked; `saved` and `mask` are what it had before the batch. On
// kBlobDone it is in a PTRACE_EVENT_STOP, ferry's to use; on kBlobSelfRestored it runs its
// own code again (stopped, with its own registers and mask): the caller must not put back
// `saved`. kBlobSkipped: nothing was done (run the calls one by one); also when the program or
// its table could not be written (a kernel refusing forced writes to /proc/PID/mem). On
// kBlobFailed `o.blob_loose` says whether the task may be anywhere in the program.
BlobResult RunBlob(pid_t tid, const struct user_regs_struct& saved, uint64_t mask, const uint64_t* calls,
                   size_t count, BatchOptions& o, int64_t* out, const char** what);

}  // namespace inject
}  // namespace ferry
