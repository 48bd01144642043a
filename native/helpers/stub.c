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
 * restoring or survive. If it ever runs on its own, it just waits in pause(2).
 */
__attribute__((naked, noreturn)) void _start(void)
{
	__asm__ volatile(
		"1:\n\t"
		"mov $34, %eax\n\t"   /* __NR_pause */
		"syscall\n\t"
		"jmp 1b\n\t");
}
