// Terminals: the state of a tty and of a pseudoterminal pair, read and set from the controller
// on descriptors it holds (a pidfd_getfd copy at checkpoint, its own new pair at restore).
//
// Wraps ioctl(2) requests of ioctl_tty(2) and pty(7):
//   TCGETS2 / TCSETS2   struct termios2 (termios plus c_ispeed/c_ospeed); on a pty master the
//                       kernel acts on the slave's termios (tty_mode_ioctl uses the link)
//   TIOCGWINSZ / TIOCSWINSZ  struct winsize; on a master, the slave's (tty_pair_get_tty)
//   TIOCGPTN            index N of the pair (/dev/pts/N), on a master
//   TIOCGPTLCK / TIOCSPTLCK  lock of the slave (unlockpt(3) clears it; a locked slave cannot
//                       be opened: EIO)
//   TIOCGPKT / TIOCPKT  packet mode of a master (a state of the pair: the master's tty)
//   TIOCGEXCL / TIOCEXCL / TIOCNXCL  exclusive mode of the tty behind the descriptor (a
//                       master's own, or the slave's): only CAP_SYS_ADMIN opens it again
//   TIOCGPTPEER         opens the slave of a master through the master's own devpts instance
//                       (Linux 4.13), without a path lookup
//   TIOCGDEV            device number of the tty behind a descriptor (also behind /dev/tty)
//   FIONREAD (TIOCINQ)  bytes the line discipline holds for reading (canonical mode: complete
//                       lines only)
//   TIOCOUTQ            bytes not yet sent by the driver
//   TIOCSTI             hands one byte to the line discipline as if the terminal had received
//                       it (tiocsti: receive_buf under the ldisc and the port's buffer lock), at
//                       once rather than through the flip buffer's worker as a master's write
//                       does; it needs CAP_SYS_ADMIN (or the terminal as controlling terminal
//                       with dev.tty.legacy_tiocsti), checked before the byte is read, so a null
//                       argument asks whether it is allowed (EFAULT) without giving one
// and poll(2) with no timeout: on a master in packet mode POLLPRI says a status byte is
// pending (n_tty_poll), which only a read(2) would take.
#include <napi.h>

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/sysmacros.h>
#include <asm/termbits.h>
#include <unistd.h>

#include "errors.h"

#ifndef TIOCGPTPEER
#define TIOCGPTPEER _IO('T', 0x41)
#endif
#ifndef TIOCGEXCL
#define TIOCGEXCL _IOR('T', 0x40, int)
#endif

namespace ferry {
namespace {

std::string FdDetail(int64_t fd) { return "fd " + std::to_string(fd); }

// ioctl(fd, req, &int) -> the int.
Napi::Value GetInt(const Napi::CallbackInfo& info, unsigned long req, const char* name) {
  int64_t fd;
  if (!ArgInt(info, 0, &fd)) return {};
  int v = 0;
  if (ioctl(static_cast<int>(fd), req, &v) < 0) {
    ThrowErrno(info.Env(), name, errno, FdDetail(fd));
    return {};
  }
  return Napi::Number::New(info.Env(), v);
}

// ioctl(fd, req, &int) with the int from argument 1.
Napi::Value SetInt(const Napi::CallbackInfo& info, unsigned long req, const char* name) {
  int64_t fd, value;
  if (!ArgInt(info, 0, &fd) || !ArgInt(info, 1, &value)) return {};
  int v = static_cast<int>(value);
  if (ioctl(static_cast<int>(fd), req, &v) < 0) {
    ThrowErrno(info.Env(), name, errno, FdDetail(fd));
    return {};
  }
  return info.Env().Undefined();
}

// ttyGetTermios(fd) -> Buffer holding struct termios2.
Napi::Value GetTermios(const Napi::CallbackInfo& info) {
  int64_t fd;
  if (!ArgInt(info, 0, &fd)) return {};
  struct termios2 t;
  memset(&t, 0, sizeof t);
  if (ioctl(static_cast<int>(fd), TCGETS2, &t) < 0) {
    ThrowErrno(info.Env(), "ioctl(TCGETS2)", errno, FdDetail(fd));
    return {};
  }
  return Napi::Buffer<uint8_t>::Copy(info.Env(), reinterpret_cast<uint8_t*>(&t), sizeof t);
}

// ttySetTermios(fd, Buffer): TCSETS2 (applies at once; no drain, no flush).
Napi::Value SetTermios(const Napi::CallbackInfo& info) {
  int64_t fd;
  Napi::Buffer<uint8_t> b;
  if (!ArgInt(info, 0, &fd) || !ArgBuffer(info, 1, &b)) return {};
  struct termios2 t;
  if (b.Length() != sizeof t) {
    ThrowType(info.Env(), "ttySetTermios: the buffer must hold a struct termios2 (" + std::to_string(sizeof t) + " bytes)");
    return {};
  }
  memcpy(&t, b.Data(), sizeof t);
  if (ioctl(static_cast<int>(fd), TCSETS2, &t) < 0) {
    ThrowErrno(info.Env(), "ioctl(TCSETS2)", errno, FdDetail(fd));
    return {};
  }
  return info.Env().Undefined();
}

// ttyGetWinsize(fd) -> {row, col, xpixel, ypixel}.
Napi::Value GetWinsize(const Napi::CallbackInfo& info) {
  int64_t fd;
  if (!ArgInt(info, 0, &fd)) return {};
  struct winsize w;
  memset(&w, 0, sizeof w);
  if (ioctl(static_cast<int>(fd), TIOCGWINSZ, &w) < 0) {
    ThrowErrno(info.Env(), "ioctl(TIOCGWINSZ)", errno, FdDetail(fd));
    return {};
  }
  Napi::Object o = Napi::Object::New(info.Env());
  o.Set("row", w.ws_row);
  o.Set("col", w.ws_col);
  o.Set("xpixel", w.ws_xpixel);
  o.Set("ypixel", w.ws_ypixel);
  return o;
}

// ttySetWinsize(fd, row, col, xpixel, ypixel).
Napi::Value SetWinsize(const Napi::CallbackInfo& info) {
  int64_t fd, row, col, xp, yp;
  if (!ArgInt(info, 0, &fd) || !ArgInt(info, 1, &row) || !ArgInt(info, 2, &col) ||
      !ArgInt(info, 3, &xp) || !ArgInt(info, 4, &yp)) return {};
  struct winsize w;
  w.ws_row = static_cast<unsigned short>(row);
  w.ws_col = static_cast<unsigned short>(col);
  w.ws_xpixel = static_cast<unsigned short>(xp);
  w.ws_ypixel = static_cast<unsigned short>(yp);
  if (ioctl(static_cast<int>(fd), TIOCSWINSZ, &w) < 0) {
    ThrowErrno(info.Env(), "ioctl(TIOCSWINSZ)", errno, FdDetail(fd));
    return {};
  }
  return info.Env().Undefined();
}

Napi::Value PtyIndex(const Napi::CallbackInfo& info) { return GetInt(info, TIOCGPTN, "ioctl(TIOCGPTN)"); }
Napi::Value PtyLocked(const Napi::CallbackInfo& info) { return GetInt(info, TIOCGPTLCK, "ioctl(TIOCGPTLCK)"); }
Napi::Value PtySetLocked(const Napi::CallbackInfo& info) { return SetInt(info, TIOCSPTLCK, "ioctl(TIOCSPTLCK)"); }
Napi::Value PtyPacket(const Napi::CallbackInfo& info) { return GetInt(info, TIOCGPKT, "ioctl(TIOCGPKT)"); }
Napi::Value PtySetPacket(const Napi::CallbackInfo& info) { return SetInt(info, TIOCPKT, "ioctl(TIOCPKT)"); }
Napi::Value TtyExclusive(const Napi::CallbackInfo& info) { return GetInt(info, TIOCGEXCL, "ioctl(TIOCGEXCL)"); }
Napi::Value TtyInq(const Napi::CallbackInfo& info) { return GetInt(info, FIONREAD, "ioctl(FIONREAD)"); }
Napi::Value TtyOutq(const Napi::CallbackInfo& info) { return GetInt(info, TIOCOUTQ, "ioctl(TIOCOUTQ)"); }

// ttySetExclusive(fd, on): TIOCEXCL (on) or TIOCNXCL (0); neither takes an argument.
Napi::Value TtySetExclusive(const Napi::CallbackInfo& info) {
  int64_t fd, on;
  if (!ArgInt(info, 0, &fd) || !ArgInt(info, 1, &on)) return {};
  const char* name = on ? "ioctl(TIOCEXCL)" : "ioctl(TIOCNXCL)";
  if (ioctl(static_cast<int>(fd), on ? TIOCEXCL : TIOCNXCL) < 0) {
    ThrowErrno(info.Env(), name, errno, FdDetail(fd));
    return {};
  }
  return info.Env().Undefined();
}

// ttyPoll(fd, events) -> revents of poll(2) with timeout 0 (0: none of them now).
Napi::Value TtyPoll(const Napi::CallbackInfo& info) {
  int64_t fd, events;
  if (!ArgInt(info, 0, &fd) || !ArgInt(info, 1, &events)) return {};
  struct pollfd p;
  p.fd = static_cast<int>(fd);
  p.events = static_cast<short>(events);
  p.revents = 0;
  int r;
  do {
    r = poll(&p, 1, 0);
  } while (r < 0 && errno == EINTR);
  if (r < 0) {
    ThrowErrno(info.Env(), "poll", errno, FdDetail(fd));
    return {};
  }
  return Napi::Number::New(info.Env(), r == 0 ? 0 : p.revents);
}

// ttyDevice(fd) -> {major, minor} of the tty behind fd (TIOCGDEV).
Napi::Value TtyDevice(const Napi::CallbackInfo& info) {
  int64_t fd;
  if (!ArgInt(info, 0, &fd)) return {};
  unsigned int dev = 0;
  if (ioctl(static_cast<int>(fd), TIOCGDEV, &dev) < 0) {
    ThrowErrno(info.Env(), "ioctl(TIOCGDEV)", errno, FdDetail(fd));
    return {};
  }
  // The kernel returns new_encode_dev(): the same layout as a userspace dev_t's low 32 bits.
  Napi::Object o = Napi::Object::New(info.Env());
  o.Set("major", major(dev));
  o.Set("minor", minor(dev));
  return o;
}

// ttyInsertInput(fd, Buffer): TIOCSTI for each byte, in order; throws at the first error,
// saying after how many bytes.
Napi::Value InsertInput(const Napi::CallbackInfo& info) {
  int64_t fd;
  Napi::Buffer<uint8_t> b;
  if (!ArgInt(info, 0, &fd) || !ArgBuffer(info, 1, &b)) return {};
  for (size_t i = 0; i < b.Length(); i++) {
    char c = static_cast<char>(b.Data()[i]);
    int r;
    do {
      r = ioctl(static_cast<int>(fd), TIOCSTI, &c);
    } while (r < 0 && errno == EINTR);
    if (r < 0) {
      ThrowErrno(info.Env(), "ioctl(TIOCSTI)", errno, FdDetail(fd) + ", after " + std::to_string(i) + " of " + std::to_string(b.Length()) + " bytes");
      return {};
    }
  }
  return info.Env().Undefined();
}

// ttyMayInsertInput(fd) -> whether TIOCSTI is allowed on fd: with a null argument the kernel
// checks the capability (EPERM/EIO) before it reads the byte (EFAULT), so nothing is inserted.
Napi::Value MayInsertInput(const Napi::CallbackInfo& info) {
  int64_t fd;
  if (!ArgInt(info, 0, &fd)) return {};
  if (ioctl(static_cast<int>(fd), TIOCSTI, nullptr) == 0) {
    ThrowType(info.Env(), "ttyMayInsertInput: TIOCSTI took a byte from a null pointer");
    return {};
  }
  int e = errno;
  if (e == EFAULT) return Napi::Boolean::New(info.Env(), true);
  if (e == EPERM || e == EIO) return Napi::Boolean::New(info.Env(), false);
  ThrowErrno(info.Env(), "ioctl(TIOCSTI)", e, FdDetail(fd));
  return {};
}

// ptyPeer(masterFd, flags) -> fd of the slave opened with `flags` (| O_CLOEXEC).
Napi::Value PtyPeer(const Napi::CallbackInfo& info) {
  int64_t fd, flags;
  if (!ArgInt(info, 0, &fd) || !ArgInt(info, 1, &flags)) return {};
  int r = ioctl(static_cast<int>(fd), TIOCGPTPEER, static_cast<int>(flags) | O_CLOEXEC);
  if (r < 0) {
    ThrowErrno(info.Env(), "ioctl(TIOCGPTPEER)", errno, FdDetail(fd));
    return {};
  }
  return Napi::Number::New(info.Env(), r);
}

}  // namespace

void InitTty(Napi::Env env, Napi::Object exports) {
  exports.Set("ttyGetTermios", Napi::Function::New(env, GetTermios));
  exports.Set("ttySetTermios", Napi::Function::New(env, SetTermios));
  exports.Set("ttyGetWinsize", Napi::Function::New(env, GetWinsize));
  exports.Set("ttySetWinsize", Napi::Function::New(env, SetWinsize));
  exports.Set("ttyDevice", Napi::Function::New(env, TtyDevice));
  exports.Set("ttyInq", Napi::Function::New(env, TtyInq));
  exports.Set("ttyOutq", Napi::Function::New(env, TtyOutq));
  exports.Set("ttyExclusive", Napi::Function::New(env, TtyExclusive));
  exports.Set("ttySetExclusive", Napi::Function::New(env, TtySetExclusive));
  exports.Set("ttyPoll", Napi::Function::New(env, TtyPoll));
  exports.Set("ttyInsertInput", Napi::Function::New(env, InsertInput));
  exports.Set("ttyMayInsertInput", Napi::Function::New(env, MayInsertInput));
  exports.Set("ptyIndex", Napi::Function::New(env, PtyIndex));
  exports.Set("ptyLocked", Napi::Function::New(env, PtyLocked));
  exports.Set("ptySetLocked", Napi::Function::New(env, PtySetLocked));
  exports.Set("ptyPacket", Napi::Function::New(env, PtyPacket));
  exports.Set("ptySetPacket", Napi::Function::New(env, PtySetPacket));
  exports.Set("ptyPeer", Napi::Function::New(env, PtyPeer));
}

}  // namespace ferry
