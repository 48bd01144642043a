/*
 * ferry-watchdog write FILE VALUE | ferry-watchdog exec PROGRAM [ARG...] |
 * ferry-watchdog kill PID...: undoes one step if ferry dies before it does so itself.
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
 *     every process through its pidfd; `exec` runs PROGRAM with its arguments (e.g.
 *     `runc delete --force ID`), with stdio on /dev/null.
 * It ignores SIGINT, SIGTERM, SIGHUP and SIGPIPE: a Ctrl-C meant for ferry must not kill it.
 * Exit status: 0 disarmed, 1 acted, 2 usage or setup error (reported on stderr); in exec mode
 * the program's own once it acted.
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
#include <unistd.h>

int main(int argc, char **argv)
{
	int exec_mode = argc >= 3 && strcmp(argv[1], "exec") == 0;
	int kill_mode = argc >= 3 && strcmp(argv[1], "kill") == 0;
	if (!exec_mode && !kill_mode && !(argc == 4 && strcmp(argv[1], "write") == 0)) {
		fprintf(stderr, "usage: ferry-watchdog write FILE VALUE | ferry-watchdog exec PROGRAM [ARG...] | ferry-watchdog kill PID...\n");
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
