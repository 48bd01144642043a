// Bounded waits on one traced task (shared by ptrace.cc and inject.cc).
#pragma once
#include <stdint.h>
#include <sys/types.h>

namespace ferry {

// waitpid(tid, status, flags | __WALL), but never forever: returns the pid when a status was
// collected; -1 with errno ESRCH when the task is dead yet cannot be collected (a leader whose
// threads are unreaped zombies: it would never report), ETIMEDOUT after `timeout_ms`, or
// waitpid's own errno. Polls with WNOHANG: spins briefly (a ptrace stop usually lands within
// microseconds), then sleeps in growing steps up to 1 ms, checking /proc/TID/stat meanwhile.
pid_t WaitBounded(pid_t tid, int* status, int flags, int timeout_ms);

// While one lives on a thread, the waits of that thread leave ferry's SIGCHLD handler as it
// is (see QuietStops in wait.cc): it makes SA_NOCLDSTOP sure once, for a whole injected batch.
// A batch runs no JavaScript, so nothing reinstalls Node's handler before it ends; without
// it, every wait of the batch (two per injected call) asked the kernel for the handler again.
class QuietWaits {
 public:
  QuietWaits();
  ~QuietWaits();
  QuietWaits(const QuietWaits&) = delete;
  QuietWaits& operator=(const QuietWaits&) = delete;
};

// State letter of a task from /proc/TID/stat, or 0 when it is gone.
char TaskState(pid_t tid);

// CLOCK_MONOTONIC in nanoseconds.
int64_t NowNs();

// How long a wait spins (waitpid WNOHANG, sched_yield) before it sleeps between polls. A
// ptrace round trip (resume, the tracee runs to its next stop) takes 5-10 us on an idle
// machine and up to a few hundred under load; an injected syscall is two of them. Spinning by
// time rather than by a count of yields: a sched_yield with nothing else to run returns in
// well under a microsecond, and the first sleep costs at least the timer slack (50 us), so
// a count-bounded spin turned every round trip slower than ~40 us into 60-100 us.
constexpr int64_t kSpinNs = 2000000;

// Default bound of every wait for a ptrace stop or exit: long enough for a loaded machine,
// short enough that no path hangs.
constexpr int kWaitTimeoutMs = 30000;

}  // namespace ferry
