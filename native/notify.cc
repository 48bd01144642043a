// Event notification files: epoll, inotify, fanotify, and finding an inode from its handle.
//
// Wraps kcmp(2) KCMP_EPOLL_TFD (is file fd1 of pid1 the file registered in pid2's epoll `efd`
// as target `tfd`, the `toff`-th item with that number? struct kcmp_epoll_slot {efd, tfd,
// toff}; 0 when it is, 1/2/3 when not, EBADF when fd1 is not open, ENOENT when the epoll has
// no such item), epoll_create1(2), inotify_init1(2), ioctl(2) INOTIFY_IOC_SETNEXTWD (the next
// inotify_add_watch(2) of this instance gets the lowest free descriptor >= the argument, taken
// by value, 1..INT_MAX; inotify(7)), inotify_add_watch(2), open_by_handle_at(2) (needs
// CAP_DAC_READ_SEARCH; `mount_fd` names the file system), fanotify_init(2) and
// fanotify_mark(2). Every descriptor returned has O_CLOEXEC.
#include <napi.h>

#include <errno.h>
#include <fcntl.h>
#include <linux/kcmp.h>
#include <stdint.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/fanotify.h>
#include <sys/inotify.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <string>
#include <vector>

#include "errors.h"

#ifndef INOTIFY_IOC_SETNEXTWD
#define INOTIFY_IOC_SETNEXTWD _IOW('I', 0, __s32)
#endif

namespace ferry {
namespace {

Napi::Value Fd(const Napi::CallbackInfo& info, long r, const char* syscall, const std::string& detail = "") {
  if (r < 0) {
    ThrowErrno(info.Env(), syscall, errno, detail);
    return {};
  }
  return Napi::Number::New(info.Env(), static_cast<double>(r));
}

bool ArgString(const Napi::CallbackInfo& info, size_t i, std::string* out) {
  if (i >= info.Length() || !info[i].IsString()) {
    ThrowType(info.Env(), "argument " + std::to_string(i) + " must be a string");
    return false;
  }
  *out = info[i].As<Napi::String>().Utf8Value();
  return true;
}

// kcmpEpollTfd(pid1, pid2, fd1, efd, tfd, toff) -> 0 | 1 | 2 | 3.
Napi::Value KcmpEpollTfd(const Napi::CallbackInfo& info) {
  int64_t p1, p2, fd1, efd, tfd, toff;
  if (!ArgInt(info, 0, &p1) || !ArgInt(info, 1, &p2) || !ArgInt(info, 2, &fd1) ||
      !ArgInt(info, 3, &efd) || !ArgInt(info, 4, &tfd) || !ArgInt(info, 5, &toff)) return {};
  struct kcmp_epoll_slot slot;
  slot.efd = static_cast<__u32>(efd);
  slot.tfd = static_cast<__u32>(tfd);
  slot.toff = static_cast<__u32>(toff);
  long r = syscall(SYS_kcmp, p1, p2, KCMP_EPOLL_TFD, fd1, &slot);
  return Fd(info, r, "kcmp(KCMP_EPOLL_TFD)",
            "pid " + std::to_string(p2) + " epoll fd " + std::to_string(efd) + " target " + std::to_string(tfd));
}

// epollCreate1(flags) -> fd.
Napi::Value EpollCreate1(const Napi::CallbackInfo& info) {
  int64_t flags = 0;
  if (info.Length() > 0 && !ArgInt(info, 0, &flags)) return {};
  return Fd(info, epoll_create1(static_cast<int>(flags) | EPOLL_CLOEXEC), "epoll_create1");
}

// inotifyInit1(flags) -> fd.
Napi::Value InotifyInit1(const Napi::CallbackInfo& info) {
  int64_t flags = 0;
  if (info.Length() > 0 && !ArgInt(info, 0, &flags)) return {};
  return Fd(info, inotify_init1(static_cast<int>(flags) | IN_CLOEXEC), "inotify_init1");
}

// inotifySetNextWd(fd, wd): ioctl INOTIFY_IOC_SETNEXTWD, the argument passed by value.
Napi::Value InotifySetNextWd(const Napi::CallbackInfo& info) {
  int64_t fd, wd;
  if (!ArgInt(info, 0, &fd) || !ArgInt(info, 1, &wd)) return {};
  if (ioctl(static_cast<int>(fd), INOTIFY_IOC_SETNEXTWD, static_cast<unsigned long>(wd)) < 0) {
    ThrowErrno(info.Env(), "ioctl(INOTIFY_IOC_SETNEXTWD)", errno, "wd " + std::to_string(wd));
    return {};
  }
  return info.Env().Undefined();
}

// inotifyAddWatch(fd, path, mask) -> wd.
Napi::Value InotifyAddWatch(const Napi::CallbackInfo& info) {
  int64_t fd, mask;
  std::string path;
  if (!ArgInt(info, 0, &fd) || !ArgString(info, 1, &path) || !ArgInt(info, 2, &mask)) return {};
  return Fd(info, inotify_add_watch(static_cast<int>(fd), path.c_str(), static_cast<uint32_t>(mask)),
            "inotify_add_watch", path);
}

// openByHandle(mountFd, handleType, handle, flags) -> fd: open_by_handle_at(2) with a
// struct file_handle built from the bytes fdinfo printed (f_handle) and their type.
Napi::Value OpenByHandle(const Napi::CallbackInfo& info) {
  int64_t mountFd, type, flags;
  Napi::Buffer<uint8_t> bytes;
  if (!ArgInt(info, 0, &mountFd) || !ArgInt(info, 1, &type) || !ArgBuffer(info, 2, &bytes) ||
      !ArgInt(info, 3, &flags)) return {};
  if (bytes.Length() > MAX_HANDLE_SZ) {
    ThrowType(info.Env(), "openByHandle: a handle has at most MAX_HANDLE_SZ bytes");
    return {};
  }
  std::vector<uint8_t> buf(sizeof(struct file_handle) + bytes.Length());
  auto* fh = reinterpret_cast<struct file_handle*>(buf.data());
  fh->handle_bytes = static_cast<unsigned>(bytes.Length());
  fh->handle_type = static_cast<int>(type);
  memcpy(fh->f_handle, bytes.Data(), bytes.Length());
  return Fd(info, open_by_handle_at(static_cast<int>(mountFd), fh, static_cast<int>(flags) | O_CLOEXEC),
            "open_by_handle_at");
}

// fanotifyInit(flags, eventFFlags) -> fd.
Napi::Value FanotifyInit(const Napi::CallbackInfo& info) {
  int64_t flags, fflags;
  if (!ArgInt(info, 0, &flags) || !ArgInt(info, 1, &fflags)) return {};
  return Fd(info, fanotify_init(static_cast<unsigned>(flags) | FAN_CLOEXEC, static_cast<unsigned>(fflags)),
            "fanotify_init");
}

// fanotifyMark(fd, flags, mask, dirfd, path): fanotify_mark(2); mask is 64-bit (bigint or number).
Napi::Value FanotifyMark(const Napi::CallbackInfo& info) {
  int64_t fd, flags, dirfd;
  uint64_t mask;
  std::string path;
  if (!ArgInt(info, 0, &fd) || !ArgInt(info, 1, &flags) || !ArgU64(info, 2, &mask) ||
      !ArgInt(info, 3, &dirfd) || !ArgString(info, 4, &path)) return {};
  if (fanotify_mark(static_cast<int>(fd), static_cast<unsigned>(flags), mask, static_cast<int>(dirfd),
                    path.c_str()) < 0) {
    ThrowErrno(info.Env(), "fanotify_mark", errno, path);
    return {};
  }
  return info.Env().Undefined();
}

}  // namespace

void InitNotify(Napi::Env env, Napi::Object exports) {
  exports.Set("kcmpEpollTfd", Napi::Function::New(env, KcmpEpollTfd));
  exports.Set("epollCreate1", Napi::Function::New(env, EpollCreate1));
  exports.Set("inotifyInit1", Napi::Function::New(env, InotifyInit1));
  exports.Set("inotifySetNextWd", Napi::Function::New(env, InotifySetNextWd));
  exports.Set("inotifyAddWatch", Napi::Function::New(env, InotifyAddWatch));
  exports.Set("openByHandle", Napi::Function::New(env, OpenByHandle));
  exports.Set("fanotifyInit", Napi::Function::New(env, FanotifyInit));
  exports.Set("fanotifyMark", Napi::Function::New(env, FanotifyMark));
}

}  // namespace ferry
