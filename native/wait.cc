// Bounded waitpid(2) for traced tasks. Wraps waitpid(2) with WNOHANG, /proc/TID/stat,
// sched_yield(2), nanosleep(2), and sigaction(2) (SA_NOCLDSTOP on ferry's own SIGCHLD handler).
//
// Why bounded: a blocking waitpid on a thread-group leader never returns when the process was
// killed from outside while its other threads are ptrace zombies that only we would reap
// (the leader's exit is reported only once the group is empty, see delay_group_leader() in
// kernel/exit.c); and a tracee that never stops must not hang ferry.
#include "wait.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

namespace ferry {
namespace {

// State letter of a task from /proc/TID/stat, or 0 when it is gone.
char TaskState(pid_t tid) {
  char path[64], buf[512];
  snprintf(path, sizeof(path), "/proc/%d/stat", static_cast<int>(tid));
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 0;
  ssize_t n = read(fd, buf, sizeof(buf) - 1);
  close(fd);
  if (n <= 0) return 0;
  buf[n] = '\0';
  const char* paren = strrchr(buf, ')');
  return paren && paren[1] == ' ' ? paren[2] : 0;
}

// Whether a thread of `leader`'s group other than the leader is still on its way out (in
// /proc/LEADER/task, in a state other than zombie or dead). A killed process's leader turns
// zombie at once, but it is reported, and can be reaped, only once every other thread has
// exited (delay_group_leader() in kernel/exit.c): 256 threads take tens of milliseconds to.
// A thread that is a zombie itself waits for its tracer (us) to reap it and never goes.
bool ThreadsExiting(pid_t leader) {
  char path[64];
  snprintf(path, sizeof(path), "/proc/%d/task", static_cast<int>(leader));
  DIR* d = opendir(path);
  if (d == nullptr) return false;
  bool exiting = false;
  while (struct dirent* e = readdir(d)) {
    pid_t t = static_cast<pid_t>(atoi(e->d_name));
    if (t <= 0 || t == leader) continue;
    char st = TaskState(t);
    if (st != 0 && st != 'Z' && st != 'X') {
      exiting = true;
      break;
    }
  }
  closedir(d);
  return exiting;
}

// How long a wait gives a zombie leader's other threads to exit (ThreadsExiting): 256 killed
// threads take some 10-50 ms here.
constexpr int64_t kExitGraceNs = 2000000000;

// How long a wait spins (waitpid WNOHANG, sched_yield) before it sleeps between polls. A
// ptrace round trip (resume, the tracee runs to its next stop) takes 5-10 us on an idle
// machine and up to a few hundred under load; an injected syscall is two of them. Spinning by
// time rather than by a count of yields: a sched_yield with nothing else to run returns in
// well under a microsecond, and the first sleep costs at least the timer slack (50 us), so
// a count-bounded spin turned every round trip slower than ~40 us into 60-100 us.
constexpr int64_t kSpinNs = 2000000;

int64_t NowNs() {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1000000000 + ts.tv_nsec;
}

// Keeps the stops of ferry's tracees from each sending ferry a SIGCHLD. The kernel notifies
// the tracer of every ptrace stop with SIGCHLD (do_notify_parent_cldstop(), for_ptracer),
// unless its SIGCHLD action is SIG_IGN or has SA_NOCLDSTOP; the wait itself is woken either
// way (__wake_up_parent()). Node's SIGCHLD handler (libuv's, installed by the first
// child_process spawn) is there for child exits only: libuv reaps with waitpid(WNOHANG) and
// never looks at stops. Left as it is, each of the two stops of an injected syscall
// interrupts ferry with a signal, which made injection 3-4 times slower (measured: 75
// injected calls in 2.1-2.5 ms into a task that is not ferry's child, 5.6-8.5 ms into one that
// is, after a spawn). So SA_NOCLDSTOP is added to a handler that lacks it, checked at every
// wait (libuv may install its handler again), or once for a batch of waits that runs no
// JavaScript meanwhile (QuietWaits).
void QuietStops() {
  struct sigaction sa;
  if (sigaction(SIGCHLD, nullptr, &sa) != 0) return;
  if (sa.sa_handler == SIG_DFL || sa.sa_handler == SIG_IGN || (sa.sa_flags & SA_NOCLDSTOP) != 0) return;
  sa.sa_flags |= SA_NOCLDSTOP;
  sigaction(SIGCHLD, &sa, nullptr);
}

// QuietWaits alive on this thread (they may nest).
thread_local int quiet_waits = 0;

}  // namespace

QuietWaits::QuietWaits() {
  if (quiet_waits++ == 0) QuietStops();
}

QuietWaits::~QuietWaits() { quiet_waits--; }

pid_t WaitBounded(pid_t tid, int* status, int flags, int timeout_ms) {
  if (quiet_waits == 0) QuietStops();
  const int64_t start = NowNs();
  const int64_t deadline = start + static_cast<int64_t>(timeout_ms) * 1000000;
  const int64_t spin_until = start + kSpinNs;
  long sleep_ns = 20000;
  int64_t zombie_since = 0;
  for (;;) {
    pid_t r = waitpid(tid, status, flags | WNOHANG | __WALL);
    if (r != 0) {
      if (r < 0 && errno == EINTR) continue;
      return r;
    }
    if (flags & WNOHANG) return 0;
    if (NowNs() < spin_until) {
      sched_yield();
      continue;
    }
    char st = TaskState(tid);
    // A zombie leader whose other threads are still on their way out will be reported: waited
    // for, up to kExitGraceNs (a leader that exited on its own while its threads run on is a
    // zombie too, and is not reported before they all exit: that wait must stay short).
    bool exiting = st == 'Z' && ThreadsExiting(tid);
    if (exiting && zombie_since == 0) zombie_since = NowNs();
    if (st == 0 || st == 'X' || (st == 'Z' && (!exiting || NowNs() - zombie_since > kExitGraceNs))) {
      // Dead; collectable ones were collected above, so this one will not report.
      r = waitpid(tid, status, WNOHANG | __WALL);
      if (r != 0) return r;
      errno = ESRCH;
      return -1;
    }
    if (NowNs() > deadline) {
      errno = ETIMEDOUT;
      return -1;
    }
    struct timespec ts = {0, sleep_ns};
    nanosleep(&ts, nullptr);
    if (sleep_ns < 1000000) sleep_ns *= 2;
  }
}

}  // namespace ferry
