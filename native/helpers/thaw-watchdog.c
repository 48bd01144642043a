/*
 * ferry-thaw-watchdog FILE VALUE: thaws a frozen cgroup if ferry dies while it is frozen.
 *
 * A container checkpoint freezes the container's cgroup (writes FROZEN to freezer.state, or
 * 1 to cgroup.freeze) while it seizes every thread. If ferry were killed (SIGKILL, the OOM
 * killer) in that window, nothing in the kernel would thaw the cgroup: the container would
 * stay frozen forever. So before freezing, ferry starts this watchdog, detached in its own
 * session, with a pipe as its stdin whose only write end ferry holds:
 *   - it opens FILE for writing first (so a later failure to open cannot surprise it), takes
 *     a pidfd of its parent (pidfd_open(2)), prints "armed" and waits in poll(2) on both;
 *   - "d" on stdin (ferry thawed the cgroup itself): it exits without touching anything;
 *   - EOF on stdin, or the pidfd becoming readable (ferry exited without disarming it): it
 *     writes VALUE (THAWED or 0) to FILE and exits.
 * It ignores SIGINT, SIGTERM, SIGHUP and SIGPIPE: a Ctrl-C meant for ferry must not kill it.
 * Exit status: 0 disarmed, 1 thawed, 2 usage or setup error (reported on stderr).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	if (argc != 3) {
		fprintf(stderr, "usage: ferry-thaw-watchdog FILE VALUE\n");
		return 2;
	}
	signal(SIGINT, SIG_IGN);
	signal(SIGTERM, SIG_IGN);
	signal(SIGHUP, SIG_IGN);
	signal(SIGPIPE, SIG_IGN);
	int file = open(argv[1], O_WRONLY | O_CLOEXEC);
	if (file < 0) {
		fprintf(stderr, "ferry-thaw-watchdog: cannot open %s: %s\n", argv[1], strerror(errno));
		return 2;
	}
	int parent = (int)syscall(SYS_pidfd_open, getppid(), 0);
	if (parent < 0 || getppid() == 1) {
		fprintf(stderr, "ferry-thaw-watchdog: no parent to watch: %s\n", strerror(errno));
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
	size_t len = strlen(argv[2]);
	if (write(file, argv[2], len) != (ssize_t)len) {
		fprintf(stderr, "ferry-thaw-watchdog: cannot write %s to %s: %s\n", argv[2], argv[1], strerror(errno));
		return 2;
	}
	return 1;
}
