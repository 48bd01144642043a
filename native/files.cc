// File identity and descriptor transfer between processes.
//
// Wraps kcmp(2) (KCMP_FILE: do two fds refer to the same open file description? returns 0
// equal, 1/2 ordered less/greater, 3 unordered-unequal), pidfd_open(2) and pidfd_getfd(2)
// (duplicates another process's fd into the caller: the same open file description, so file
// offsets stay shared; needs PTRACE_MODE_ATTACH_REALCREDS), lseek(2) and open(2).
#include <napi.h>

#include <errno.h>
#include <fcntl.h>
#include <linux/kcmp.h>
#include <sys/syscall.h>
#include <sched.h>
#include <sys/xattr.h>
#include <unistd.h>

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
// opened before handing them to a task.
Napi::Value Lseek(const Napi::CallbackInfo& info) {
  int64_t fd, off, whence;
  if (!ArgInt(info, 0, &fd) || !ArgInt(info, 1, &off) || !ArgInt(info, 2, &whence)) return {};
  off_t r = lseek(static_cast<int>(fd), static_cast<off_t>(off), static_cast<int>(whence));
  if (r < 0) {
    ThrowErrno(info.Env(), "lseek", errno, "fd " + std::to_string(fd));
    return {};
  }
  return Napi::Number::New(info.Env(), static_cast<double>(r));
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

}  // namespace

void InitFiles(Napi::Env env, Napi::Object exports) {
  exports.Set("setNs", Napi::Function::New(env, SetNs));
  exports.Set("getXattr", Napi::Function::New(env, GetXattr));
  exports.Set("asyncOwner", Napi::Function::New(env, AsyncOwner));
  exports.Set("kcmp", Napi::Function::New(env, Kcmp));
  exports.Set("pidfdOpen", Napi::Function::New(env, PidfdOpen));
  exports.Set("pidfdGetfd", Napi::Function::New(env, PidfdGetfd));
  exports.Set("closeFd", Napi::Function::New(env, CloseFd));
  exports.Set("lseek", Napi::Function::New(env, Lseek));
  exports.Set("openRaw", Napi::Function::New(env, OpenRaw));
}

}  // namespace ferry
