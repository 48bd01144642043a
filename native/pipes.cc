// Pipes and FIFOs: creating them, their capacity, and copying their buffered data without
// consuming it.
//
// Wraps pipe2(2) (O_CLOEXEC always added), tee(2) (duplicates up to len bytes of one pipe's
// buffers into another pipe: the pages are shared, the source keeps its data; both must be
// pipes, the source open for reading), fcntl(2) F_GETPIPE_SZ / F_SETPIPE_SZ (capacity in
// bytes; the kernel rounds a new size up to a power-of-two number of pages), F_GETFL /
// F_SETFL (only O_APPEND, O_NONBLOCK, O_DIRECT, O_NOATIME, O_ASYNC can change), and
// ioctl(2) FIONREAD (bytes buffered in a pipe).
#include <napi.h>

#include <errno.h>
#include <fcntl.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "errors.h"

namespace ferry {
namespace {

// pipe2(flags) -> [readFd, writeFd].
Napi::Value Pipe2(const Napi::CallbackInfo& info) {
  int64_t flags = 0;
  if (info.Length() > 0 && !ArgInt(info, 0, &flags)) return {};
  int fds[2];
  if (pipe2(fds, static_cast<int>(flags) | O_CLOEXEC) < 0) {
    ThrowErrno(info.Env(), "pipe2", errno);
    return {};
  }
  Napi::Array out = Napi::Array::New(info.Env(), 2);
  out.Set(0u, Napi::Number::New(info.Env(), fds[0]));
  out.Set(1u, Napi::Number::New(info.Env(), fds[1]));
  return out;
}

// tee(fdIn, fdOut, len, flags) -> bytes duplicated (0: the source is empty and has no writers).
// With SPLICE_F_NONBLOCK an empty source with writers, or a full destination, is EAGAIN.
Napi::Value Tee(const Napi::CallbackInfo& info) {
  int64_t in, out, len, flags;
  if (!ArgInt(info, 0, &in) || !ArgInt(info, 1, &out) || !ArgInt(info, 2, &len) ||
      !ArgInt(info, 3, &flags)) return {};
  ssize_t r = tee(static_cast<int>(in), static_cast<int>(out), static_cast<size_t>(len),
                  static_cast<unsigned>(flags));
  if (r < 0) {
    ThrowErrno(info.Env(), "tee", errno, "fd " + std::to_string(in) + " -> fd " + std::to_string(out));
    return {};
  }
  return Napi::Number::New(info.Env(), static_cast<double>(r));
}

// fcntl(fd, cmd, arg) for the int-valued commands this file wraps; -> the result.
Napi::Value FcntlInt(const Napi::CallbackInfo& info, int cmd, const char* name, bool hasArg) {
  int64_t fd, arg = 0;
  if (!ArgInt(info, 0, &fd)) return {};
  if (hasArg && !ArgInt(info, 1, &arg)) return {};
  int r = fcntl(static_cast<int>(fd), cmd, static_cast<int>(arg));
  if (r < 0) {
    ThrowErrno(info.Env(), name, errno, "fd " + std::to_string(fd));
    return {};
  }
  return Napi::Number::New(info.Env(), r);
}

// pipeSize(fd) -> capacity in bytes.
Napi::Value PipeSize(const Napi::CallbackInfo& info) {
  return FcntlInt(info, F_GETPIPE_SZ, "fcntl(F_GETPIPE_SZ)", false);
}

// setPipeSize(fd, bytes) -> the capacity the kernel chose (>= bytes). EBUSY when the pipe holds
// more data than the new size; EPERM above /proc/sys/fs/pipe-max-size without CAP_SYS_RESOURCE.
Napi::Value SetPipeSize(const Napi::CallbackInfo& info) {
  return FcntlInt(info, F_SETPIPE_SZ, "fcntl(F_SETPIPE_SZ)", true);
}

// getFl(fd) -> file status flags and access mode of the open file.
Napi::Value GetFl(const Napi::CallbackInfo& info) {
  return FcntlInt(info, F_GETFL, "fcntl(F_GETFL)", false);
}

// setFl(fd, flags): sets the changeable status flags; the rest of `flags` is ignored by the kernel.
Napi::Value SetFl(const Napi::CallbackInfo& info) {
  Napi::Value r = FcntlInt(info, F_SETFL, "fcntl(F_SETFL)", true);
  return r.IsEmpty() ? r : info.Env().Undefined();
}

// pipeUnread(fd) -> bytes buffered in the pipe (ioctl FIONREAD).
Napi::Value PipeUnread(const Napi::CallbackInfo& info) {
  int64_t fd;
  if (!ArgInt(info, 0, &fd)) return {};
  int n = 0;
  if (ioctl(static_cast<int>(fd), FIONREAD, &n) < 0) {
    ThrowErrno(info.Env(), "ioctl(FIONREAD)", errno, "fd " + std::to_string(fd));
    return {};
  }
  return Napi::Number::New(info.Env(), n);
}

}  // namespace

void InitPipes(Napi::Env env, Napi::Object exports) {
  exports.Set("pipe2", Napi::Function::New(env, Pipe2));
  exports.Set("tee", Napi::Function::New(env, Tee));
  exports.Set("pipeSize", Napi::Function::New(env, PipeSize));
  exports.Set("setPipeSize", Napi::Function::New(env, SetPipeSize));
  exports.Set("getFl", Napi::Function::New(env, GetFl));
  exports.Set("setFl", Napi::Function::New(env, SetFl));
  exports.Set("pipeUnread", Napi::Function::New(env, PipeUnread));
}

}  // namespace ferry
