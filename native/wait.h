// Bounded waits on one traced task (shared by ptrace.cc and inject.cc).
#pragma once
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

// Default bound of every wait for a ptrace stop or exit: long enough for a loaded machine,
// short enough that no path hangs.
constexpr int kWaitTimeoutMs = 30000;

}  // namespace ferry
