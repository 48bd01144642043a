/*
 * ferry-stub: the body a restored task is rebuilt in.
 *
 * Restore clone3()s a child with the task's original PID (set_tid), which calls
 * ptrace(PTRACE_TRACEME) and execve()s this program. The execve stops the child with SIGTRAP
 * before the first instruction here runs. From then on the controller drives it only from
 * outside: it finds the `syscall` instruction below, injects syscalls through it, unmaps
 * everything of this program and maps the dumped process in its place.
 *
 * No libc, no TLS, no rseq, no stack use beyond the entry frame: nothing here must need
 * restoring or survive. If it ever runs on its own, it just waits in pause(2), which only
 * ever returns -EINTR.
 *
 * Every other stub is forked by its parent stub (an injected clone3 through the same
 * `syscall`), and runs on its own from there until ferry seizes it: it is the one return of
 * 0 from that instruction. Before it waits, it asks for SIGKILL when its parent dies
 * (PR_SET_PDEATHSIG), so that a ferry killed before it seizes the child (which kills the
 * traced parent, PTRACE_O_EXITKILL) takes the child too; if the parent died already, the
 * parent pid it finds differs from the one ferry left in r12, and it exits.
 */
__attribute__((naked, noreturn)) void _start(void)
{
	__asm__ volatile(
		"1:\n\t"
		"mov $34, %eax\n\t"   /* __NR_pause */
		"syscall\n\t"
		"test %rax, %rax\n\t"
		"jnz 1b\n\t"
		/* A child stub, just forked: its parent's pid (as it sees it) is in r12. */
		"mov $157, %eax\n\t"  /* __NR_prctl */
		"mov $1, %edi\n\t"    /* PR_SET_PDEATHSIG */
		"mov $9, %esi\n\t"    /* SIGKILL */
		"syscall\n\t"
		"mov $110, %eax\n\t"  /* __NR_getppid */
		"syscall\n\t"
		"cmp %r12, %rax\n\t"
		"je 1b\n\t"
		"mov $231, %eax\n\t"  /* __NR_exit_group */
		"xor %edi, %edi\n\t"
		"syscall\n\t"
		"jmp 1b\n\t");
}
