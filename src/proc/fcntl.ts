/** open(2) flag values on x86-64 (as /proc/PID/fdinfo prints them, in octal). */
export const O_RDONLY = 0, O_WRONLY = 1;
export const O_ACCMODE = 0o3;
export const O_APPEND = 0o2000;
export const O_NONBLOCK = 0o4000;
export const O_DSYNC = 0o10000;
export const O_DIRECT = 0o40000;
export const O_LARGEFILE = 0o100000;
export const O_DIRECTORY = 0o200000;
export const O_NOATIME = 0o1000000;
export const O_CLOEXEC = 0o2000000;
export const O_SYNC = 0o4010000;
export const O_PATH = 0o10000000;
/** __O_TMPFILE | O_DIRECTORY: an unnamed file in the directory opened. */
export const O_TMPFILE = 0o20200000;
/** The *at(2) calls' directory descriptor meaning the caller's working directory. */
export const AT_FDCWD = -100;
