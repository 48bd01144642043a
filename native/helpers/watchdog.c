/*
 * ferry-watchdog write FILE VALUE | ferry-watchdog exec PROGRAM [ARG...] |
 * ferry-watchdog kill PID... | ferry-watchdog hold PID START SECONDS STATE N: undoes one step if
 * ferry dies before it does so itself, or holds descriptors between two of ferry's runs.
 *
 * Some of ferry's steps are not undone by the kernel when ferry dies: a frozen cgroup stays
 * frozen (a container checkpoint freezes it while it seizes every thread), and a container
 * that a restore created stays in its runtime's list, and the processes a restore has begun to
 * let go run on while the rest die with ferry. So before such a step ferry starts
 * this watchdog, detached in its own session, with a pipe as its stdin whose only write end
 * ferry holds:
 *   - `write`: it opens FILE for writing first (so a later failure to open cannot surprise
 *     it); `kill`: it takes a pidfd of every PID (so a PID reused later is never hit);
 *     `exec`: nothing to prepare;
 *   - it takes a pidfd of its parent (pidfd_open(2)), prints "armed" and waits in poll(2) on
 *     the pidfd and stdin;
 *   - "d" on stdin (ferry undid or finished the step itself): it exits without doing anything;
 *   - EOF on stdin, or the pidfd becoming readable (ferry exited without disarming it):
 *     `write` writes VALUE to FILE (THAWED or 0: the cgroup thaws); `kill` sends SIGKILL to
 *     every process through its pidfd and waits (10 s at most each) until it is dead, holding
 *     every descriptor it inherited beyond 0-2 until then; `exec` runs PROGRAM with its arguments (e.g.
 *     `runc delete --force ID`), with stdio on /dev/null.
 * It ignores SIGINT, SIGTERM, SIGHUP and SIGPIPE: a Ctrl-C meant for ferry must not kill it.
 * Exit status: 0 disarmed, 1 acted, 2 usage or setup error (reported on stderr); in exec mode
 * the program's own once it acted.
 *
 * `hold` (the memory tracker between a pre-dump and the next dump, src/runtime/criu-track.ts):
 * it keeps the N descriptors it was started with from 3 on (userfaultfds made in a container's
 * processes) and closes any other (its caller's, inherited without O_CLOEXEC: runc's socket). It takes a pidfd of PID (the container's init) and checks that
 * PID is still the process started at START (field 22 of /proc/PID/stat), prints "armed" and
 * waits until that process exits or SECONDS pass; the next dump takes the descriptors with
 * pidfd_getfd(2) and kills it (SIGKILL). Exiting closes them, and the kernel then unregisters
 * every area they had (userfaultfd_release()): the container runs on as if never tracked. On
 * its way out it removes STATE, the file that names it, if that still names it (its pid in a
 * line "holder PID").
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdlib.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

/* Start time (field 22) of process `pid`, or -1. */
static long long start_time(const char *pid)
{
	char path[64], buf[1024];
	snprintf(path, sizeof path, "/proc/%s/stat", pid);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) return -1;
	ssize_t n = read(fd, buf, sizeof buf - 1);
	close(fd);
	if (n <= 0) return -1;
	buf[n] = '\0';
	char *p = strrchr(buf, ')');
	for (int field = 2; p && field < 22; field++) p = strchr(p + 1, ' ');
	return p ? strtoll(p + 1, NULL, 10) : -1;
}

/* hold PID START SECONDS STATE N: see the comment at the top. */
static int hold(char **argv)
{
	char *end;
	long pid = strtol(argv[2], &end, 10);
	long seconds = strtol(argv[4], NULL, 10);
	long held = strtol(argv[6], NULL, 10);
	if (held < 0 || held > 65536) return 2;
	syscall(SYS_close_range, 3 + (unsigned int)held, ~0U, 0);
	int init = pid > 0 && *end == '\0' ? (int)syscall(SYS_pidfd_open, (pid_t)pid, 0) : -1;
	if (init < 0 || seconds <= 0 || start_time(argv[2]) != strtoll(argv[3], NULL, 10)) {
		fprintf(stderr, "ferry-watchdog: pid %s is not the process to hold for\n", argv[2]);
		return 2;
	}
	if (write(1, "armed\n", 6) != 6) return 2;
	int nul = open("/dev/null", O_RDWR);
	if (nul >= 0) {
		dup2(nul, 0);
		dup2(nul, 1);
		dup2(nul, 2);
		if (nul > 2) close(nul);
	}
	struct pollfd fd = { .fd = init, .events = POLLIN };
	struct timespec now, until;
	clock_gettime(CLOCK_MONOTONIC, &until);
	until.tv_sec += seconds;
	for (;;) {
		clock_gettime(CLOCK_MONOTONIC, &now);
		long long left = (long long)(until.tv_sec - now.tv_sec) * 1000 + (until.tv_nsec - now.tv_nsec) / 1000000;
		if (left <= 0) break;
		int r = poll(&fd, 1, left > 60000 ? 60000 : (int)left);
		if (r > 0 || (r < 0 && errno != EINTR)) break;
	}
	char buf[256], want[32];
	int st = open(argv[5], O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	if (st >= 0) {
		ssize_t n = read(st, buf, sizeof buf - 1);
		close(st);
		snprintf(want, sizeof want, "holder %d\n", (int)getpid());
		if (n > 0 && (buf[n] = '\0', strstr(buf, want) != NULL)) unlink(argv[5]);
	}
	return 1;
}

int main(int argc, char **argv)
{
	if (argc == 7 && strcmp(argv[1], "hold") == 0) {
		signal(SIGINT, SIG_IGN);
		signal(SIGTERM, SIG_IGN);
		signal(SIGHUP, SIG_IGN);
		signal(SIGPIPE, SIG_IGN);
		return hold(argv);
	}
	int exec_mode = argc >= 3 && strcmp(argv[1], "exec") == 0;
	int kill_mode = argc >= 3 && strcmp(argv[1], "kill") == 0;
	if (!exec_mode && !kill_mode && !(argc == 4 && strcmp(argv[1], "write") == 0)) {
		fprintf(stderr, "usage: ferry-watchdog write FILE VALUE | ferry-watchdog exec PROGRAM [ARG...] | ferry-watchdog kill PID... | ferry-watchdog hold PID START SECONDS STATE N\n");
		return 2;
	}
	signal(SIGINT, SIG_IGN);
	signal(SIGTERM, SIG_IGN);
	signal(SIGHUP, SIG_IGN);
	signal(SIGPIPE, SIG_IGN);
	int file = -1;
	int *victims = NULL;
	if (kill_mode) {
		victims = calloc((size_t)argc, sizeof(int));
		if (!victims) return 2;
		for (int i = 2; i < argc; i++) {
			char *end;
			long pid = strtol(argv[i], &end, 10);
			victims[i] = pid > 0 && *end == '\0' ? (int)syscall(SYS_pidfd_open, (pid_t)pid, 0) : -1;
			if (victims[i] < 0) {
				fprintf(stderr, "ferry-watchdog: cannot watch pid %s: %s\n", argv[i], strerror(errno));
				return 2;
			}
		}
	} else if (!exec_mode) {
		file = open(argv[2], O_WRONLY | O_CLOEXEC);
		if (file < 0) {
			fprintf(stderr, "ferry-watchdog: cannot open %s: %s\n", argv[2], strerror(errno));
			return 2;
		}
	}
	int parent = (int)syscall(SYS_pidfd_open, getppid(), 0);
	if (parent < 0 || getppid() == 1) {
		fprintf(stderr, "ferry-watchdog: no parent to watch: %s\n", strerror(errno));
		return 2;
	}
	if (write(1, "armed\n", 6) != 6) return 2;
	struct pollfd fds[2] = { { .fd = 0, .events = POLLIN }, { .fd = parent, .events = POLLIN } };
	for (;;) {
		if (poll(fds, 2, -1) < 0) {
			if (errno == EINTR) continue;
			break;
		}
		if (fds[0].revents) {
			char c;
			ssize_t n = read(0, &c, 1);
			if (n == 1 && c == 'd') return 0;
			if (n < 0 && errno == EINTR) continue;
			break; /* EOF or anything else: ferry is gone */
		}
		if (fds[1].revents) break;
	}
	if (kill_mode) {
		for (int i = 2; i < argc; i++) syscall(SYS_pidfd_send_signal, victims[i], SIGKILL, NULL, 0);
		/* Exit (closing what ferry handed it to hold, e.g. userfaultfds: restore/lazy.ts)
		 * only once every victim is dead: a pidfd is readable once its process exited. */
		for (int i = 2; i < argc; i++) {
			struct pollfd v = { .fd = victims[i], .events = POLLIN };
			while (poll(&v, 1, 10000) < 0 && errno == EINTR) {}
		}
		return 1;
	}
	if (exec_mode) {
		int nul = open("/dev/null", O_RDWR);
		if (nul >= 0) {
			dup2(nul, 0);
			dup2(nul, 1);
			dup2(nul, 2);
		}
		signal(SIGINT, SIG_DFL);
		signal(SIGTERM, SIG_DFL);
		signal(SIGHUP, SIG_DFL);
		signal(SIGPIPE, SIG_DFL);
		execvp(argv[2], argv + 2);
		return 2;
	}
	size_t len = strlen(argv[3]);
	if (write(file, argv[3], len) != (ssize_t)len) {
		fprintf(stderr, "ferry-watchdog: cannot write %s to %s: %s\n", argv[3], argv[2], strerror(errno));
		return 2;
	}
	return 1;
}
