// File identity, descriptor transfer between processes, and confined path resolution.
//
// Wraps kcmp(2) (KCMP_FILE: do two fds refer to the same open file description? returns 0
// equal, 1/2 ordered less/greater, 3 unordered-unequal), pidfd_open(2) and pidfd_getfd(2)
// (duplicates another process's fd into the caller: the same open file description, so file
// offsets stay shared; needs PTRACE_MODE_ATTACH_REALCREDS), lseek(2), open(2), and cachestat(2)
// (Linux 6.5: how many pages of a file range are in the page cache); and readlink(2), stat(2)
// and read(2) of /proc/PID/fd/N and fdinfo/N for many descriptors at once.
//
// And the *at() family that resolves a path relative to a directory descriptor, for paths that
// come from an image (untrusted input: docs/security.md): openat2(2) with struct open_how
// {flags, mode, resolve}, mkdirat(2), mkfifoat(3) and mknodat(2) of a character device, unlinkat(2), symlinkat(2),
// renameat2(2), fchownat(2), readlinkat(2).
// Only openat2 takes RESOLVE_* flags, so the policy (src/files/confined.ts) resolves the parent
// directory of a name with openat2 and then acts on the last component alone through that
// directory's descriptor: a single component cannot traverse anything, and the *at() calls
// below never follow a final symlink (unlinkat, mkdirat, symlinkat, renameat2 act on the name
// itself; fchownat takes AT_SYMLINK_NOFOLLOW).
//
// Also name_to_handle_at(2) (AT_EMPTY_PATH: the handle of the file a descriptor refers to) and
// linkat(2) with AT_EMPTY_PATH (a new name for the file a descriptor refers to; needs
// CAP_DAC_READ_SEARCH, and the file must still have a link: nlink 0 gives ENOENT).
//
// openat2(2) resolve flags (include/uapi/linux/openat2.h; fs/namei.c):
//   RESOLVE_BENEATH        every component must stay under dirfd: an absolute path, an
//                          absolute symlink, or ".." above dirfd fails with EXDEV.
//   RESOLVE_IN_ROOT        dirfd is treated as "/" for this lookup (like chroot(2), only for
//                          it): "/" and ".." at the root, absolute paths and absolute symlink
//                          targets all stay inside dirfd instead of failing.
//   RESOLVE_NO_MAGICLINKS  refuses procfs "magic links" (/proc/PID/fd/N, /proc/PID/root,
//                          /proc/PID/cwd, /proc/PID/map_files/...), which jump to an object
//                          without a path walk and so could leave any root: ELOOP. BENEATH and
//                          IN_ROOT refuse them too (EXDEV) unless this flag turns it into ELOOP.
//   RESOLVE_NO_SYMLINKS    refuses every symlink, also a trailing one unless O_PATH|O_NOFOLLOW
//                          asked for the link itself: ELOOP.
//   RESOLVE_NO_XDEV        refuses crossing a mount point: EXDEV.
// With BENEATH or IN_ROOT, a ".." walked while a rename or mount anywhere on the system could
// have moved the tree makes the kernel give up with EAGAIN rather than risk an escape: the
// caller may simply retry. openat2 is strict where open(2) is lenient: unknown bits in flags or
// resolve are EINVAL, and so is a non-zero mode without O_CREAT or O_TMPFILE (so mode is only
// passed with those). O_CLOEXEC is always added.
#include <napi.h>

#include <errno.h>
#include <fcntl.h>
#include <linux/kcmp.h>
#include <limits.h>
#include <linux/nsfs.h>
#include <linux/openat2.h>
#include <stdio.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sched.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <string>
#include <vector>

#include "errors.h"

namespace ferry {
namespace {

// kcmp(pid1, pid2, type, idx1, idx2) -> 0 | 1 | 2 | 3.
Napi::Value Kcmp(const Napi::CallbackInfo& info) {
  int64_t p1, p2, type, i1, i2;
  if (!ArgInt(info, 0, &p1) || !ArgInt(info, 1, &p2) || !ArgInt(info, 2, &type) ||
      !ArgInt(info, 3, &i1) || !ArgInt(info, 4, &i2)) return {};
  long r = syscall(SYS_kcmp, p1, p2, type, i1, i2);
  if (r < 0) {
    ThrowErrno(info.Env(), "kcmp", errno, "pids " + std::to_string(p1) + "/" + std::to_string(p2));
    return {};
  }
  return Napi::Number::New(info.Env(), static_cast<double>(r));
}

// pidfdOpen(pid, flags) -> fd.
Napi::Value PidfdOpen(const Napi::CallbackInfo& info) {
  int64_t pid, flags = 0;
  if (!ArgInt(info, 0, &pid)) return {};
  if (info.Length() > 1 && !ArgInt(info, 1, &flags)) return {};
  long r = syscall(SYS_pidfd_open, pid, flags);
  if (r < 0) {
    ThrowErrno(info.Env(), "pidfd_open", errno, "pid " + std::to_string(pid));
    return {};
  }
  return Napi::Number::New(info.Env(), static_cast<double>(r));
}

// pidfdSendSignal(pidfd, sig) -> false if the process is gone (ESRCH), true once sent: no pid
// that was reused can be hit.
Napi::Value PidfdSendSignal(const Napi::CallbackInfo& info) {
  int64_t pidfd, sig;
  if (!ArgInt(info, 0, &pidfd) || !ArgInt(info, 1, &sig)) return {};
  long r = syscall(SYS_pidfd_send_signal, pidfd, sig, nullptr, 0);
  if (r < 0 && errno == ESRCH) return Napi::Boolean::New(info.Env(), false);
  if (r < 0) {
    ThrowErrno(info.Env(), "pidfd_send_signal", errno);
    return {};
  }
  return Napi::Boolean::New(info.Env(), true);
}

// pidfdGetfd(pidfd, targetFd) -> fd in this process (O_CLOEXEC set).
Napi::Value PidfdGetfd(const Napi::CallbackInfo& info) {
  int64_t pidfd, fd;
  if (!ArgInt(info, 0, &pidfd) || !ArgInt(info, 1, &fd)) return {};
  long r = syscall(SYS_pidfd_getfd, pidfd, fd, 0);
  if (r < 0) {
    ThrowErrno(info.Env(), "pidfd_getfd", errno, "fd " + std::to_string(fd));
    return {};
  }
  return Napi::Number::New(info.Env(), static_cast<double>(r));
}

// closeFd(fd): close(2) for descriptors the addon or pidfd_getfd handed out.
Napi::Value CloseFd(const Napi::CallbackInfo& info) {
  int64_t fd;
  if (!ArgInt(info, 0, &fd)) return {};
  if (close(static_cast<int>(fd)) < 0) ThrowErrno(info.Env(), "close", errno, "fd " + std::to_string(fd));
  return info.Env().Undefined();
}

// lseek(fd, offset, whence) -> new offset. Node's fs has no lseek; restore positions files it
// opened before handing them to a task. The offset may be a BigInt (the new offset is one
// then): a directory's position on ext4 and other hashing file systems is a cookie of up to 63
// bits, beyond a double's exact integers.
Napi::Value Lseek(const Napi::CallbackInfo& info) {
  int64_t fd, off, whence;
  const bool big = info.Length() > 1 && info[1].IsBigInt();
  if (big) {
    bool lossless = true;
    off = info[1].As<Napi::BigInt>().Int64Value(&lossless);
    if (!lossless) {
      ThrowType(info.Env(), "argument 1 must fit in 64 bits");
      return {};
    }
  }
  if (!ArgInt(info, 0, &fd) || (!big && !ArgInt(info, 1, &off)) || !ArgInt(info, 2, &whence)) return {};
  off_t r = lseek(static_cast<int>(fd), static_cast<off_t>(off), static_cast<int>(whence));
  if (r < 0) {
    ThrowErrno(info.Env(), "lseek", errno, "fd " + std::to_string(fd));
    return {};
  }
  if (big) return Napi::BigInt::New(info.Env(), static_cast<int64_t>(r));
  return Napi::Number::New(info.Env(), static_cast<double>(r));
}

// cachestat(2) of a range is not in the C library yet: the kernel's uapi (linux/mman.h).
#ifndef __NR_cachestat
#define __NR_cachestat 451
#endif
struct CachestatRange { uint64_t off, len; };
struct Cachestat { uint64_t nr_cache, nr_dirty, nr_writeback, nr_evicted, nr_recently_evicted; };

// cachedPages(fd, offset, length) -> pages of [offset, offset + length) of the file in the page
// cache (cachestat(2) nr_cache, dirty ones included), or -1 where the kernel has no cachestat
// (ENOSYS before 6.5) or the file does not take it (EOPNOTSUPP: hugetlbfs).
Napi::Value CachedPages(const Napi::CallbackInfo& info) {
  int64_t fd, off, len;
  if (!ArgInt(info, 0, &fd) || !ArgInt(info, 1, &off) || !ArgInt(info, 2, &len)) return {};
  CachestatRange range{static_cast<uint64_t>(off), static_cast<uint64_t>(len)};
  Cachestat cs{};
  if (syscall(__NR_cachestat, static_cast<int>(fd), &range, &cs, 0) < 0) {
    if (errno == ENOSYS || errno == EOPNOTSUPP) return Napi::Number::New(info.Env(), -1);
    ThrowErrno(info.Env(), "cachestat", errno, "fd " + std::to_string(fd));
    return {};
  }
  return Napi::Number::New(info.Env(), static_cast<double>(cs.nr_cache));
}

// openRaw(path, flags, mode) -> fd: open(2) with flags passed through unchanged (O_PATH,
// O_DIRECTORY, O_NOATIME…), which Node's fs.openSync does not all accept.
Napi::Value OpenRaw(const Napi::CallbackInfo& info) {
  int64_t flags, mode = 0;
  if (info.Length() < 1 || !info[0].IsString()) {
    ThrowType(info.Env(), "openRaw(path: string, flags: number, mode?: number)");
    return {};
  }
  std::string path = info[0].As<Napi::String>().Utf8Value();
  if (!ArgInt(info, 1, &flags)) return {};
  if (info.Length() > 2 && !ArgInt(info, 2, &mode)) return {};
  int fd = open(path.c_str(), static_cast<int>(flags) | O_CLOEXEC, static_cast<mode_t>(mode));
  if (fd < 0) {
    ThrowErrno(info.Env(), "open", errno, path);
    return {};
  }
  return Napi::Number::New(info.Env(), fd);
}

// asyncOwner(fd) -> {type, pid, sig}: who gets SIGIO for an O_ASYNC file (F_GETOWN_EX, ids
// in this process's pid namespace) and with which signal (F_GETSIG, 0 = SIGIO).
Napi::Value AsyncOwner(const Napi::CallbackInfo& info) {
  int64_t fd;
  if (!ArgInt(info, 0, &fd)) return {};
  struct f_owner_ex owner = {};
  if (fcntl(static_cast<int>(fd), F_GETOWN_EX, &owner) < 0) {
    ThrowErrno(info.Env(), "fcntl(F_GETOWN_EX)", errno, "fd " + std::to_string(fd));
    return {};
  }
  int sig = fcntl(static_cast<int>(fd), F_GETSIG);
  if (sig < 0) {
    ThrowErrno(info.Env(), "fcntl(F_GETSIG)", errno, "fd " + std::to_string(fd));
    return {};
  }
  Napi::Object out = Napi::Object::New(info.Env());
  out.Set("type", static_cast<int>(owner.type));
  out.Set("pid", owner.pid);
  out.Set("sig", sig);
  return out;
}

// getXattr(path, name) -> Buffer | null (lgetxattr(2); null when the file has no such
// attribute). Node's fs has no extended attributes.
Napi::Value GetXattr(const Napi::CallbackInfo& info) {
  if (info.Length() < 2 || !info[0].IsString() || !info[1].IsString()) {
    ThrowType(info.Env(), "getXattr(path: string, name: string)");
    return {};
  }
  std::string path = info[0].As<Napi::String>().Utf8Value();
  std::string name = info[1].As<Napi::String>().Utf8Value();
  char buf[4096];
  ssize_t n = lgetxattr(path.c_str(), name.c_str(), buf, sizeof(buf));
  if (n < 0) {
    if (errno == ENODATA || errno == ENOTSUP) return info.Env().Null();
    ThrowErrno(info.Env(), "lgetxattr", errno, path);
    return {};
  }
  return Napi::Buffer<char>::Copy(info.Env(), buf, static_cast<size_t>(n));
}

// setNs(fd, nstype): setns(2) of the calling thread (the JS thread: every syscall the
// controller makes runs there). Used to create and inspect a container's sockets in its
// network namespace.
Napi::Value SetNs(const Napi::CallbackInfo& info) {
  int64_t fd, type;
  if (!ArgInt(info, 0, &fd) || !ArgInt(info, 1, &type)) return {};
  if (setns(static_cast<int>(fd), static_cast<int>(type)) < 0) {
    ThrowErrno(info.Env(), "setns", errno, "fd " + std::to_string(fd));
    return {};
  }
  return info.Env().Undefined();
}

// nsParent(fd) -> fd: ioctl NS_GET_PARENT of a pid (or user) namespace's descriptor, a new
// descriptor (close-on-exec) of its parent; throws EPERM above the caller's user namespace's
// reach (the initial namespace has none).
Napi::Value NsParent(const Napi::CallbackInfo& info) {
  int64_t fd;
  if (!ArgInt(info, 0, &fd)) return {};
  int parent = ioctl(static_cast<int>(fd), NS_GET_PARENT);
  if (parent < 0) {
    ThrowErrno(info.Env(), "ioctl(NS_GET_PARENT)", errno, "fd " + std::to_string(fd));
    return {};
  }
  return Napi::Number::New(info.Env(), parent);
}

// A path argument at `i`: a JS string without NUL bytes (a C string would silently end at the
// first one and name another file). On failure throws and returns false.
bool ArgPath(const Napi::CallbackInfo& info, size_t i, const char* syscall, std::string* out) {
  if (i >= info.Length() || !info[i].IsString()) {
    ThrowType(info.Env(), std::string(syscall) + ": argument " + std::to_string(i) + " must be a string");
    return false;
  }
  *out = info[i].As<Napi::String>().Utf8Value();
  if (out->find('\0') != std::string::npos) {
    ThrowErrno(info.Env(), syscall, EINVAL, "path contains a NUL byte");
    return false;
  }
  return true;
}

// Detail of an error: the path relative to which descriptor.
std::string AtDetail(int64_t dirfd, const std::string& path) {
  return path + " under fd " + std::to_string(dirfd);
}

// openat2(dirfd, path, flags, mode, resolve) -> fd (O_CLOEXEC added). mode is passed only with
// O_CREAT or O_TMPFILE (openat2 refuses it otherwise).
Napi::Value Openat2(const Napi::CallbackInfo& info) {
  int64_t dirfd, flags, mode, resolve;
  std::string path;
  if (!ArgInt(info, 0, &dirfd) || !ArgPath(info, 1, "openat2", &path) || !ArgInt(info, 2, &flags) ||
      !ArgInt(info, 3, &mode) || !ArgInt(info, 4, &resolve)) return {};
  struct open_how how = {};
  how.flags = static_cast<uint64_t>(flags) | O_CLOEXEC;
  how.mode = (flags & (O_CREAT | O_TMPFILE)) != 0 ? static_cast<uint64_t>(mode) : 0;
  how.resolve = static_cast<uint64_t>(resolve);
  long fd = syscall(SYS_openat2, static_cast<int>(dirfd), path.c_str(), &how, sizeof(how));
  if (fd < 0) {
    ThrowErrno(info.Env(), "openat2", errno, AtDetail(dirfd, path));
    return {};
  }
  return Napi::Number::New(info.Env(), static_cast<double>(fd));
}

// mkdirat(dirfd, path, mode): fails with EEXIST on anything already there, a symlink included
// (never followed).
Napi::Value Mkdirat(const Napi::CallbackInfo& info) {
  int64_t dirfd, mode;
  std::string path;
  if (!ArgInt(info, 0, &dirfd) || !ArgPath(info, 1, "mkdirat", &path) || !ArgInt(info, 2, &mode)) return {};
  if (mkdirat(static_cast<int>(dirfd), path.c_str(), static_cast<mode_t>(mode)) < 0) {
    ThrowErrno(info.Env(), "mkdirat", errno, AtDetail(dirfd, path));
    return {};
  }
  return info.Env().Undefined();
}

// openTreeClone(fd): open_tree(2) with OPEN_TREE_CLONE | AT_EMPTY_PATH of the directory `fd`
// refers to: a new mount of it attached nowhere (a detached bind mount), as a descriptor
// (close-on-exec). A file opened through it is named by the kernel from that mount's root, and
// the mount lives while such a file is open, after the descriptor is closed. Needs
// CAP_SYS_ADMIN in the user namespace owning the caller's mount namespace (EPERM otherwise).
Napi::Value OpenTreeClone(const Napi::CallbackInfo& info) {
  int64_t fd;
  if (!ArgInt(info, 0, &fd)) return {};
#ifndef SYS_open_tree
#define SYS_open_tree 428
#endif
  constexpr unsigned kOpenTreeClone = 1;           // OPEN_TREE_CLONE (<linux/mount.h>)
  constexpr unsigned kOpenTreeCloexec = O_CLOEXEC;  // OPEN_TREE_CLOEXEC
  long m = syscall(SYS_open_tree, static_cast<int>(fd), "", kOpenTreeClone | kOpenTreeCloexec | AT_EMPTY_PATH);
  if (m < 0) {
    ThrowErrno(info.Env(), "open_tree", errno, AtDetail(fd, ""));
    return {};
  }
  return Napi::Number::New(info.Env(), static_cast<double>(m));
}

// unlinkat(dirfd, path, flags): removes the name itself (a symlink, not its target);
// AT_REMOVEDIR (0x200) for an empty directory.
Napi::Value Unlinkat(const Napi::CallbackInfo& info) {
  int64_t dirfd, flags;
  std::string path;
  if (!ArgInt(info, 0, &dirfd) || !ArgPath(info, 1, "unlinkat", &path) || !ArgInt(info, 2, &flags)) return {};
  if (unlinkat(static_cast<int>(dirfd), path.c_str(), static_cast<int>(flags)) < 0) {
    ThrowErrno(info.Env(), "unlinkat", errno, AtDetail(dirfd, path));
    return {};
  }
  return info.Env().Undefined();
}

// symlinkat(target, dirfd, path): `target` is stored as text, not resolved (EEXIST if the name
// exists).
Napi::Value Symlinkat(const Napi::CallbackInfo& info) {
  int64_t dirfd;
  std::string target, path;
  if (!ArgPath(info, 0, "symlinkat", &target) || !ArgInt(info, 1, &dirfd) || !ArgPath(info, 2, "symlinkat", &path)) return {};
  if (symlinkat(target.c_str(), static_cast<int>(dirfd), path.c_str()) < 0) {
    ThrowErrno(info.Env(), "symlinkat", errno, AtDetail(dirfd, path));
    return {};
  }
  return info.Env().Undefined();
}

// readlinkat(dirfd, path) -> Buffer: the text of symlink `path` under `dirfd`; with path "" the
// text of the symlink `dirfd` itself refers to (an O_PATH | O_NOFOLLOW descriptor of it, which
// may have no name left), as bytes (a symlink's text need not be UTF-8). At most PATH_MAX - 1
// bytes: the kernel stores no longer text.
Napi::Value Readlinkat(const Napi::CallbackInfo& info) {
  int64_t dirfd;
  std::string path;
  if (!ArgInt(info, 0, &dirfd) || !ArgPath(info, 1, "readlinkat", &path)) return {};
  std::vector<char> buf(PATH_MAX);
  ssize_t n = readlinkat(static_cast<int>(dirfd), path.c_str(), buf.data(), buf.size());
  if (n < 0) {
    ThrowErrno(info.Env(), "readlinkat", errno, AtDetail(dirfd, path));
    return {};
  }
  return Napi::Buffer<char>::Copy(info.Env(), buf.data(), static_cast<size_t>(n));
}

// renameat2(olddirfd, oldpath, newdirfd, newpath, flags): renames the names themselves (a
// symlink is moved, not followed); RENAME_NOREPLACE 1 fails with EEXIST instead of replacing,
// RENAME_EXCHANGE 2 swaps both atomically.
Napi::Value Renameat2(const Napi::CallbackInfo& info) {
  int64_t olddirfd, newdirfd, flags;
  std::string oldpath, newpath;
  if (!ArgInt(info, 0, &olddirfd) || !ArgPath(info, 1, "renameat2", &oldpath) || !ArgInt(info, 2, &newdirfd) ||
      !ArgPath(info, 3, "renameat2", &newpath) || !ArgInt(info, 4, &flags)) return {};
  if (renameat2(static_cast<int>(olddirfd), oldpath.c_str(), static_cast<int>(newdirfd), newpath.c_str(),
                static_cast<unsigned>(flags)) < 0) {
    ThrowErrno(info.Env(), "renameat2", errno, AtDetail(olddirfd, oldpath) + " -> " + AtDetail(newdirfd, newpath));
    return {};
  }
  return info.Env().Undefined();
}

// fchownat(dirfd, path, uid, gid, flags): AT_SYMLINK_NOFOLLOW (0x100) changes a symlink itself
// (lchown); AT_EMPTY_PATH (0x1000) with path "" changes the file dirfd refers to, an O_PATH
// descriptor included. -1 leaves an id as it is.
Napi::Value Fchownat(const Napi::CallbackInfo& info) {
  int64_t dirfd, uid, gid, flags;
  std::string path;
  if (!ArgInt(info, 0, &dirfd) || !ArgPath(info, 1, "fchownat", &path) || !ArgInt(info, 2, &uid) ||
      !ArgInt(info, 3, &gid) || !ArgInt(info, 4, &flags)) return {};
  if (fchownat(static_cast<int>(dirfd), path.c_str(), static_cast<uid_t>(uid), static_cast<gid_t>(gid),
               static_cast<int>(flags)) < 0) {
    ThrowErrno(info.Env(), "fchownat", errno, AtDetail(dirfd, path));
    return {};
  }
  return info.Env().Undefined();
}

// nameToHandle(fd) -> {type, handle}: name_to_handle_at(fd, "", AT_EMPTY_PATH): the file
// system's handle for the file fd refers to (f_handle bytes and handle_type), valid for
// open_by_handle_at(2) on any descriptor of the same file system while the inode lives.
Napi::Value NameToHandle(const Napi::CallbackInfo& info) {
  int64_t fd;
  if (!ArgInt(info, 0, &fd)) return {};
  std::vector<uint8_t> buf(sizeof(struct file_handle) + MAX_HANDLE_SZ);
  auto* fh = reinterpret_cast<struct file_handle*>(buf.data());
  fh->handle_bytes = MAX_HANDLE_SZ;
  int mount_id = 0;
  if (name_to_handle_at(static_cast<int>(fd), "", fh, &mount_id, AT_EMPTY_PATH) < 0) {
    ThrowErrno(info.Env(), "name_to_handle_at", errno, "fd " + std::to_string(fd));
    return {};
  }
  Napi::Object out = Napi::Object::New(info.Env());
  out.Set("type", fh->handle_type);
  out.Set("handle", Napi::Buffer<uint8_t>::Copy(info.Env(), fh->f_handle, fh->handle_bytes));
  return out;
}

// linkFd(fd, newdirfd, newpath): linkat(fd, "", newdirfd, newpath, AT_EMPTY_PATH): a new name
// (never replacing one: EEXIST) for the file fd refers to.
Napi::Value LinkFd(const Napi::CallbackInfo& info) {
  int64_t fd, dirfd;
  std::string path;
  if (!ArgInt(info, 0, &fd) || !ArgInt(info, 1, &dirfd) || !ArgPath(info, 2, "linkat", &path)) return {};
  if (linkat(static_cast<int>(fd), "", static_cast<int>(dirfd), path.c_str(), AT_EMPTY_PATH) < 0) {
    ThrowErrno(info.Env(), "linkat", errno, AtDetail(dirfd, path));
    return {};
  }
  return info.Env().Undefined();
}

// mkfifoat(dirfd, path, mode): a FIFO named `path` under `dirfd` (mknodat(2) S_IFIFO; EEXIST
// on any existing name, a symlink included: never followed).
Napi::Value Mkfifoat(const Napi::CallbackInfo& info) {
  int64_t dirfd, mode;
  std::string path;
  if (!ArgInt(info, 0, &dirfd) || !ArgPath(info, 1, "mkfifoat", &path) || !ArgInt(info, 2, &mode)) return {};
  if (mkfifoat(static_cast<int>(dirfd), path.c_str(), static_cast<mode_t>(mode)) < 0) {
    ThrowErrno(info.Env(), "mkfifoat", errno, AtDetail(dirfd, path));
    return {};
  }
  return info.Env().Undefined();
}

// mknodChr(dirfd, path, mode, major, minor): a character device node named `path` under `dirfd`
// (mknodat(2) S_IFCHR with the permission bits of `mode`; EEXIST on any existing name, a
// symlink included: never followed). Nothing but a character device can be made through it.
Napi::Value MknodChr(const Napi::CallbackInfo& info) {
  int64_t dirfd, mode, major, minor;
  std::string path;
  if (!ArgInt(info, 0, &dirfd) || !ArgPath(info, 1, "mknodat", &path) || !ArgInt(info, 2, &mode)
      || !ArgInt(info, 3, &major) || !ArgInt(info, 4, &minor)) return {};
  if (major < 0 || major > 0xfff || minor < 0 || minor > 0xfffff) {
    Napi::RangeError::New(info.Env(), "mknodChr: device number out of range").ThrowAsJavaScriptException();
    return {};
  }
  dev_t dev = makedev(static_cast<unsigned>(major), static_cast<unsigned>(minor));
  if (mknodat(static_cast<int>(dirfd), path.c_str(), S_IFCHR | (static_cast<mode_t>(mode) & 07777), dev) < 0) {
    ThrowErrno(info.Env(), "mknodat", errno, AtDetail(dirfd, path));
    return {};
  }
  return info.Env().Undefined();
}

// procFds(pid, fds) -> [{link, stat, fdinfo} | null, ...]: for each descriptor, readlink(2) of
// /proc/PID/fd/FD, stat(2) of it (the file behind; stat is a BigInt64Array of st_dev, st_ino,
// st_mode, st_nlink, st_uid, st_gid, st_rdev, st_size, st_blksize, st_blocks, then atime,
// mtime, ctime in ns) and the text of /proc/PID/fdinfo/FD; null when the descriptor (or the
// process) is gone (ENOENT). The loop is Node's fs done without a JS round trip, an error
// object and a string conversion per call: 10,000 descriptors are read in a tenth of the time.
Napi::Value ProcFds(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int64_t pid;
  if (!ArgInt(info, 0, &pid)) return {};
  if (info.Length() < 2 || !info[1].IsArray()) {
    Napi::TypeError::New(env, "procFds: fds must be an array").ThrowAsJavaScriptException();
    return {};
  }
  Napi::Array fds = info[1].As<Napi::Array>();
  Napi::Array out = Napi::Array::New(env, fds.Length());
  // The two directories once, each descriptor's entries relative to them: no walk of
  // /proc/PID per call. A process gone has no descriptors (all null).
  char dir[64];
  snprintf(dir, sizeof dir, "/proc/%d/fd", static_cast<int>(pid));
  int fdDir = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  snprintf(dir, sizeof dir, "/proc/%d/fdinfo", static_cast<int>(pid));
  int infoDir = fdDir < 0 ? -1 : open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fdDir < 0 || infoDir < 0) {
    int err = errno;
    if (fdDir >= 0) close(fdDir);
    if (err == ENOENT || err == ESRCH) {
      for (uint32_t i = 0; i < fds.Length(); i++) out.Set(i, env.Null());
      return out;
    }
    ThrowErrno(env, "open", err, dir);
    return {};
  }
  struct Dirs {
    int a, b;
    ~Dirs() { close(a); close(b); }
  } dirs{fdDir, infoDir};
  std::vector<char> link(8192);
  std::string text;
  char buf[16384];
  // Every descriptor's stat is a view of one buffer: a buffer each (a backing store the
  // garbage collector tracks) cost more than the view.
  Napi::ArrayBuffer stats = Napi::ArrayBuffer::New(env, static_cast<size_t>(fds.Length()) * 13 * sizeof(int64_t));
  for (uint32_t i = 0; i < fds.Length(); i++) {
    Napi::Value v = fds.Get(i);
    if (!v.IsNumber()) {
      Napi::TypeError::New(env, "procFds: fds must be numbers").ThrowAsJavaScriptException();
      return {};
    }
    int fd = v.As<Napi::Number>().Int32Value();
    char name[16];
    snprintf(name, sizeof name, "%d", fd);
    ssize_t n = readlinkat(fdDir, name, link.data(), link.size());
    struct stat st;
    if (n < 0 || fstatat(fdDir, name, &st, 0) < 0) {
      if (errno == ENOENT) { out.Set(i, env.Null()); continue; }
      ThrowErrno(env, n < 0 ? "readlink" : "stat", errno, "pid " + std::to_string(pid) + " fd " + name);
      return {};
    }
    int ifd = openat(infoDir, name, O_RDONLY | O_CLOEXEC);
    if (ifd < 0) {
      if (errno == ENOENT) { out.Set(i, env.Null()); continue; }
      ThrowErrno(env, "open", errno, "pid " + std::to_string(pid) + " fdinfo " + name);
      return {};
    }
    text.clear();
    ssize_t r;
    while ((r = read(ifd, buf, sizeof buf)) > 0 || (r < 0 && errno == EINTR)) {
      if (r > 0) text.append(buf, static_cast<size_t>(r));
    }
    int readErr = errno;
    close(ifd);
    if (r < 0) {
      if (readErr == ENOENT || readErr == ESRCH) { out.Set(i, env.Null()); continue; }
      ThrowErrno(env, "read", readErr, "pid " + std::to_string(pid) + " fdinfo " + name);
      return {};
    }
    Napi::BigInt64Array sv = Napi::BigInt64Array::New(env, 13, stats, static_cast<size_t>(i) * 13 * sizeof(int64_t));
    int64_t* f = sv.Data();
    f[0] = static_cast<int64_t>(st.st_dev);
    f[1] = static_cast<int64_t>(st.st_ino);
    f[2] = st.st_mode;
    f[3] = static_cast<int64_t>(st.st_nlink);
    f[4] = st.st_uid;
    f[5] = st.st_gid;
    f[6] = static_cast<int64_t>(st.st_rdev);
    f[7] = st.st_size;
    f[8] = st.st_blksize;
    f[9] = st.st_blocks;
    f[10] = st.st_atim.tv_sec * 1000000000LL + st.st_atim.tv_nsec;
    f[11] = st.st_mtim.tv_sec * 1000000000LL + st.st_mtim.tv_nsec;
    f[12] = st.st_ctim.tv_sec * 1000000000LL + st.st_ctim.tv_nsec;
    Napi::Object o = Napi::Object::New(env);
    o.Set("link", Napi::String::New(env, link.data(), static_cast<size_t>(n)));
    o.Set("stat", sv);
    o.Set("fdinfo", Napi::String::New(env, text));
    out.Set(i, o);
  }
  return out;
}

}  // namespace

void InitFiles(Napi::Env env, Napi::Object exports) {
  exports.Set("mkfifoat", Napi::Function::New(env, Mkfifoat));
  exports.Set("mknodChr", Napi::Function::New(env, MknodChr));
  exports.Set("nameToHandle", Napi::Function::New(env, NameToHandle));
  exports.Set("linkFd", Napi::Function::New(env, LinkFd));
  exports.Set("openat2", Napi::Function::New(env, Openat2));
  exports.Set("mkdirat", Napi::Function::New(env, Mkdirat));
  exports.Set("openTreeClone", Napi::Function::New(env, OpenTreeClone));
  exports.Set("unlinkat", Napi::Function::New(env, Unlinkat));
  exports.Set("symlinkat", Napi::Function::New(env, Symlinkat));
  exports.Set("renameat2", Napi::Function::New(env, Renameat2));
  exports.Set("fchownat", Napi::Function::New(env, Fchownat));
  exports.Set("readlinkat", Napi::Function::New(env, Readlinkat));
  exports.Set("setNs", Napi::Function::New(env, SetNs));
  exports.Set("nsParent", Napi::Function::New(env, NsParent));
  exports.Set("getXattr", Napi::Function::New(env, GetXattr));
  exports.Set("asyncOwner", Napi::Function::New(env, AsyncOwner));
  exports.Set("kcmp", Napi::Function::New(env, Kcmp));
  exports.Set("procFds", Napi::Function::New(env, ProcFds));
  exports.Set("pidfdOpen", Napi::Function::New(env, PidfdOpen));
  exports.Set("pidfdSendSignal", Napi::Function::New(env, PidfdSendSignal));
  exports.Set("pidfdGetfd", Napi::Function::New(env, PidfdGetfd));
  exports.Set("closeFd", Napi::Function::New(env, CloseFd));
  exports.Set("lseek", Napi::Function::New(env, Lseek));
  exports.Set("cachedPages", Napi::Function::New(env, CachedPages));
  exports.Set("openRaw", Napi::Function::New(env, OpenRaw));
}

}  // namespace ferry
