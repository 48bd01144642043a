// Bounded waitpid(2) for traced tasks. Wraps waitpid(2) with WNOHANG, /proc/TID/stat, and
// nanosleep(2).
//
// Why bounded: a blocking waitpid on a thread-group leader never returns when the process was
// killed from outside while its other threads are ptrace zombies that only we would reap
// (the leader's exit is reported only once the group is empty, see delay_group_leader() in
// kernel/exit.c); and a tracee that never stops must not hang ferry.
#include "wait.h"

#include <errno.h>
#include <fcntl.h>
#include <sched.h>
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

int64_t NowNs() {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1000000000 + ts.tv_nsec;
}

}  // namespace

pid_t WaitBounded(pid_t tid, int* status, int flags, int timeout_ms) {
  const int64_t deadline = NowNs() + static_cast<int64_t>(timeout_ms) * 1000000;
  long sleep_ns = 10000;
  for (int round = 0;; round++) {
    pid_t r = waitpid(tid, status, flags | WNOHANG | __WALL);
    if (r != 0) {
      if (r < 0 && errno == EINTR) continue;
      return r;
    }
    if (flags & WNOHANG) return 0;
    if (round < 200) {
      sched_yield();
      continue;
    }
    char st = TaskState(tid);
    if (st == 0 || st == 'X' || st == 'Z') {
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
