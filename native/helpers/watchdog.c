/*
 * ferry-watchdog write FILE VALUE | ferry-watchdog exec PROGRAM [ARG...] |
 * ferry-watchdog kill PID... | ferry-watchdog sockets |
 * ferry-watchdog hold PID START SECONDS STATE N: undoes one step if ferry dies before it does
 * so itself, or holds descriptors between two of ferry's runs.
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
 * `sockets` (src/files/socket-guard.ts): the TCP sockets a checkpoint puts in repair mode and
 * whose SO_OOBINLINE and SO_PEEK_OFF it changes while it reads them, which nothing of the
 * kernel's puts back if ferry dies meanwhile (a socket left in repair mode sends nothing: its
 * connection hangs). Before it changes a socket, ferry writes a line on stdin,
 *   + PID FD INODE REUSEADDR OOBINLINE PEEKOFF
 * (the task's pid and descriptor, the socket's inode, the three options' values before), and
 * the watchdog takes that socket at once with pidfd_getfd(2) (checking that it is the socket
 * of that inode) and keeps it. "d" disarms it as in the other modes; when ferry dies instead,
 * it reads what lines are left, and puts back every socket whose process is still alive:
 * repair mode left quietly (TCP_REPAIR_OFF_NO_WP, as ferry leaves it), then the three options.
 * A socket of a process that died is left alone: closing it in repair mode sends nothing.
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
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
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

/* A socket the `sockets` mode guards. */
struct guarded {
	int fd;     /* its copy, taken with pidfd_getfd */
	int owner;  /* a pidfd of the process that holds it */
	int reuse, oob, peek, has_peek;
};

#ifndef TCP_REPAIR
#define TCP_REPAIR 19
#endif
#ifndef TCP_REPAIR_OFF_NO_WP
#define TCP_REPAIR_OFF_NO_WP -1
#endif
#ifndef SO_PEEK_OFF
#define SO_PEEK_OFF 42
#endif

/* Takes the socket a "+ PID FD INODE REUSE OOB PEEK" line names; 0 when it is not one. */
static int guard_line(const char *line, struct guarded *g)
{
	long pid, fd, reuse, oob, peek;
	unsigned long long ino;
	char peek_text[24];
	if (sscanf(line, "+ %ld %ld %llu %ld %ld %23s", &pid, &fd, &ino, &reuse, &oob, peek_text) != 6) return 0;
	if (pid <= 0 || fd < 0 || fd > 0x7fffffff) return 0;
	g->has_peek = strcmp(peek_text, "-") != 0;
	peek = g->has_peek ? strtol(peek_text, NULL, 10) : 0;
	g->owner = (int)syscall(SYS_pidfd_open, (pid_t)pid, 0);
	if (g->owner < 0) return 0;
	g->fd = (int)syscall(SYS_pidfd_getfd, g->owner, (int)fd, 0);
	struct stat st;
	if (g->fd < 0 || fstat(g->fd, &st) < 0 || !S_ISSOCK(st.st_mode) || st.st_ino != ino) {
		if (g->fd >= 0) close(g->fd);
		close(g->owner);
		return 0;
	}
	g->reuse = (int)reuse;
	g->oob = (int)oob;
	g->peek = (int)peek;
	return 1;
}

/* Puts a guarded socket back as it was, if its process still lives. */
static void put_back(const struct guarded *g)
{
	struct pollfd dead = { .fd = g->owner, .events = POLLIN };
	if (poll(&dead, 1, 0) != 0) return; /* exited (or cannot tell): leave it closed quietly */
	int on = 0;
	socklen_t len = sizeof on;
	if (getsockopt(g->fd, IPPROTO_TCP, TCP_REPAIR, &on, &len) == 0 && on) {
		int off = TCP_REPAIR_OFF_NO_WP;
		setsockopt(g->fd, IPPROTO_TCP, TCP_REPAIR, &off, sizeof off);
	}
	setsockopt(g->fd, SOL_SOCKET, SO_REUSEADDR, &g->reuse, sizeof g->reuse);
	setsockopt(g->fd, SOL_SOCKET, SO_OOBINLINE, &g->oob, sizeof g->oob);
	if (g->has_peek) setsockopt(g->fd, SOL_SOCKET, SO_PEEK_OFF, &g->peek, sizeof g->peek);
}

/* sockets: see the comment at the top. */
static int sockets(void)
{
	int parent = (int)syscall(SYS_pidfd_open, getppid(), 0);
	if (parent < 0 || getppid() == 1) {
		fprintf(stderr, "ferry-watchdog: no parent to watch: %s\n", strerror(errno));
		return 2;
	}
	size_t n = 0, cap = 16;
	struct guarded *gs = malloc(cap * sizeof *gs);
	if (!gs) return 2;
	if (write(1, "armed\n", 6) != 6) return 2;
	char buf[4096];
	size_t have = 0;
	int gone = 0, eof = 0;
	struct pollfd fds[2] = { { .fd = 0, .events = POLLIN }, { .fd = parent, .events = POLLIN } };
	for (;;) {
		/* Once ferry is gone, what it wrote before it went is still read, without waiting. */
		if (!eof && poll(fds, 2, gone ? 0 : -1) < 0) {
			if (errno == EINTR) continue;
			gone = 1;
		}
		if (fds[1].revents) gone = 1;
		if (!eof && (fds[0].revents || gone)) {
			if (gone) fcntl(0, F_SETFL, fcntl(0, F_GETFL) | O_NONBLOCK);
			ssize_t r = have < sizeof buf ? read(0, buf + have, sizeof buf - have) : 0;
			if (r < 0 && errno == EINTR) continue;
			if (r <= 0) {
				eof = 1; /* EOF, nothing more now, or a line too long: ferry is gone */
				gone = 1;
			} else {
				have += (size_t)r;
			}
		}
		char *nl;
		while ((nl = memchr(buf, '\n', have)) != NULL) {
			*nl = '\0';
			if (buf[0] == 'd') return 0;
			if (n == cap) {
				struct guarded *more = realloc(gs, 2 * cap * sizeof *gs);
				if (more) {
					gs = more;
					cap *= 2;
				}
			}
			if (n < cap && guard_line(buf, &gs[n])) n++;
			size_t used = (size_t)(nl - buf) + 1;
			memmove(buf, nl + 1, have - used);
			have -= used;
		}
		if (have == 1 && buf[0] == 'd') return 0;
		if (gone && eof) break;
	}
	for (size_t i = 0; i < n; i++) put_back(&gs[i]);
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
	if (argc == 2 && strcmp(argv[1], "sockets") == 0) {
		signal(SIGINT, SIG_IGN);
		signal(SIGTERM, SIG_IGN);
		signal(SIGHUP, SIG_IGN);
		signal(SIGPIPE, SIG_IGN);
		return sockets();
	}
	int exec_mode = argc >= 3 && strcmp(argv[1], "exec") == 0;
	int kill_mode = argc >= 3 && strcmp(argv[1], "kill") == 0;
	if (!exec_mode && !kill_mode && !(argc == 4 && strcmp(argv[1], "write") == 0)) {
		fprintf(stderr, "usage: ferry-watchdog write FILE VALUE | ferry-watchdog exec PROGRAM [ARG...] | ferry-watchdog kill PID... | ferry-watchdog sockets | ferry-watchdog hold PID START SECONDS STATE N\n");
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
