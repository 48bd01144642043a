// Unix domain sockets (unix(7)): what the kernel tells about them, and building them again.
//
// Wraps NETLINK_SOCK_DIAG with the AF_UNIX family (sock_diag(7), linux/unix_diag.h): one
// socket by inode (an exact request; ENOENT when no unix socket of this network namespace has
// that inode) or every unix socket (a dump), each with its type, state, bound name
// (UNIX_DIAG_NAME: sun_path bytes, a leading NUL for an abstract name), the inode of the file
// a path name created (UNIX_DIAG_VFS), its peer's inode (UNIX_DIAG_PEER), the inodes of the
// clients whose connections wait on a listener, oldest first (UNIX_DIAG_ICONS), queue sizes
// (UNIX_DIAG_RQLEN: a listener's pending connections and backlog, else bytes unread and bytes
// sent but not yet read by the peer) and its shutdown bits (UNIX_DIAG_SHUTDOWN).
// Also socket(2), socketpair(2), bind(2) (in a thread with its own root and cwd: unshare(2)
// CLONE_FS, chroot(2), fchdir(2)), connect(2), listen(2), accept4(2), shutdown(2),
// getsockopt(2)/setsockopt(2) for int options, recvmsg(2) with MSG_PEEK (reads a queued
// message without consuming it, with the descriptors it carries installed in the caller and
// its credentials) and sendmsg(2) (with SCM_RIGHTS and SCM_CREDENTIALS).
#include <napi.h>

#include <errno.h>
#include <fcntl.h>
#include <linux/netlink.h>
#include <linux/sock_diag.h>
#include <linux/unix_diag.h>
#include <pthread.h>
#include <sched.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <string>
#include <vector>

#include "errors.h"
#include "sockdiag.h"

#ifndef SCM_PIDFD
#define SCM_PIDFD 0x04
#endif

namespace ferry {
namespace {

constexpr uint32_t kShowAll = UDIAG_SHOW_NAME | UDIAG_SHOW_VFS | UDIAG_SHOW_PEER |
                              UDIAG_SHOW_ICONS | UDIAG_SHOW_RQLEN;

// One parsed unix_diag_msg with its attributes -> a JS object.
Napi::Object DiagToObject(Napi::Env env, const unix_diag_msg* m, size_t len) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("ino", Napi::Number::New(env, m->udiag_ino));
  o.Set("type", Napi::Number::New(env, m->udiag_type));
  o.Set("state", Napi::Number::New(env, m->udiag_state));
  o.Set("name", env.Null());
  o.Set("vfs", env.Null());
  o.Set("peer", Napi::Number::New(env, 0));
  o.Set("icons", Napi::Array::New(env, 0));
  o.Set("rqueue", Napi::Number::New(env, 0));
  o.Set("wqueue", Napi::Number::New(env, 0));
  o.Set("shutdown", Napi::Number::New(env, 0));
  const char* p = reinterpret_cast<const char*>(m) + NLMSG_ALIGN(sizeof(*m));
  size_t left = len > NLMSG_ALIGN(sizeof(*m)) ? len - NLMSG_ALIGN(sizeof(*m)) : 0;
  while (left >= sizeof(nlattr)) {
    const nlattr* a = reinterpret_cast<const nlattr*>(p);
    if (a->nla_len < sizeof(nlattr) || a->nla_len > left) break;
    const char* data = p + NLA_HDRLEN;
    size_t dlen = a->nla_len - NLA_HDRLEN;
    switch (a->nla_type) {
      case UNIX_DIAG_NAME:
        o.Set("name", Napi::Buffer<uint8_t>::Copy(env, reinterpret_cast<const uint8_t*>(data), dlen));
        break;
      case UNIX_DIAG_VFS:
        if (dlen >= sizeof(unix_diag_vfs)) {
          const unix_diag_vfs* v = reinterpret_cast<const unix_diag_vfs*>(data);
          // udiag_vfs_dev is the kernel's dev_t: major in the top 12 bits, minor in the low 20.
          Napi::Object vo = Napi::Object::New(env);
          vo.Set("ino", Napi::Number::New(env, v->udiag_vfs_ino));
          vo.Set("major", Napi::Number::New(env, v->udiag_vfs_dev >> 20));
          vo.Set("minor", Napi::Number::New(env, v->udiag_vfs_dev & 0xfffff));
          o.Set("vfs", vo);
        }
        break;
      case UNIX_DIAG_PEER:
        if (dlen >= 4) o.Set("peer", Napi::Number::New(env, *reinterpret_cast<const uint32_t*>(data)));
        break;
      case UNIX_DIAG_ICONS: {
        Napi::Array arr = Napi::Array::New(env, dlen / 4);
        for (size_t i = 0; i < dlen / 4; i++) {
          arr.Set(static_cast<uint32_t>(i), Napi::Number::New(env, reinterpret_cast<const uint32_t*>(data)[i]));
        }
        o.Set("icons", arr);
        break;
      }
      case UNIX_DIAG_RQLEN:
        if (dlen >= sizeof(unix_diag_rqlen)) {
          const unix_diag_rqlen* q = reinterpret_cast<const unix_diag_rqlen*>(data);
          o.Set("rqueue", Napi::Number::New(env, q->udiag_rqueue));
          o.Set("wqueue", Napi::Number::New(env, q->udiag_wqueue));
        }
        break;
      case UNIX_DIAG_SHUTDOWN:
        if (dlen >= 1) o.Set("shutdown", Napi::Number::New(env, *reinterpret_cast<const uint8_t*>(data)));
        break;
      default:
        break;
    }
    size_t step = NLA_ALIGN(a->nla_len);
    if (step > left) break;
    p += step;
    left -= step;
  }
  return o;
}

// Sends one unix_diag_req (exact when ino != 0, else a dump) and collects the answers.
// Returns false with errno set on failure.
bool DiagQuery(Napi::Env env, uint32_t ino, Napi::Array* out) {
  unix_diag_req req;
  memset(&req, 0, sizeof req);
  req.sdiag_family = AF_UNIX;
  req.udiag_states = ~0u;
  req.udiag_ino = ino;
  req.udiag_show = kShowAll;
  // No cookie known: INET_DIAG_NOCOOKIE (all ones) skips the check.
  req.udiag_cookie[0] = ~0u;
  req.udiag_cookie[1] = ~0u;
  uint32_t n = 0;
  int e = SockDiagQuery(SOCK_DIAG_BY_FAMILY, &req, sizeof req, ino == 0 ? NLM_F_DUMP : 0, [&](const void* p, size_t len) {
    if (len >= sizeof(unix_diag_msg)) out->Set(n++, DiagToObject(env, static_cast<const unix_diag_msg*>(p), len));
  });
  errno = e;
  return e == 0;
}

// unixDiag(ino) -> the socket, or null when no unix socket has this inode.
Napi::Value UnixDiag(const Napi::CallbackInfo& info) {
  int64_t ino;
  if (!ArgInt(info, 0, &ino)) return {};
  Napi::Array out = Napi::Array::New(info.Env());
  if (!DiagQuery(info.Env(), static_cast<uint32_t>(ino), &out)) {
    if (errno == ENOENT) return info.Env().Null();
    ThrowErrno(info.Env(), "sock_diag(AF_UNIX)", errno, "inode " + std::to_string(ino));
    return {};
  }
  if (out.Length() == 0) return info.Env().Null();
  return out.Get(0u);
}

// unixDiagAll() -> every unix socket of the caller's network namespace.
Napi::Value UnixDiagAll(const Napi::CallbackInfo& info) {
  Napi::Array out = Napi::Array::New(info.Env());
  if (!DiagQuery(info.Env(), 0, &out)) {
    ThrowErrno(info.Env(), "sock_diag(AF_UNIX, dump)", errno);
    return {};
  }
  return out;
}

// Builds a sockaddr_un from sun_path bytes (a leading NUL = abstract); -> its length.
bool MakeAddr(Napi::Env env, const Napi::Buffer<uint8_t>& name, sockaddr_un* sa, socklen_t* len) {
  memset(sa, 0, sizeof *sa);
  sa->sun_family = AF_UNIX;
  if (name.Length() == 0 || name.Length() > sizeof sa->sun_path) {
    ThrowErrno(env, "sockaddr_un", ENAMETOOLONG, "name of " + std::to_string(name.Length()) + " bytes");
    return false;
  }
  memcpy(sa->sun_path, name.Data(), name.Length());
  *len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + name.Length());
  return true;
}

// unixSocket(type) -> fd (AF_UNIX, SOCK_CLOEXEC).
Napi::Value UnixSocket(const Napi::CallbackInfo& info) {
  int64_t type;
  if (!ArgInt(info, 0, &type)) return {};
  int fd = socket(AF_UNIX, static_cast<int>(type) | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    ThrowErrno(info.Env(), "socket", errno);
    return {};
  }
  return Napi::Number::New(info.Env(), fd);
}

// unixSocketpair(type) -> [fd, fd] (SOCK_CLOEXEC).
Napi::Value UnixSocketpair(const Napi::CallbackInfo& info) {
  int64_t type;
  if (!ArgInt(info, 0, &type)) return {};
  int sv[2];
  if (socketpair(AF_UNIX, static_cast<int>(type) | SOCK_CLOEXEC, 0, sv) < 0) {
    ThrowErrno(info.Env(), "socketpair", errno);
    return {};
  }
  Napi::Array out = Napi::Array::New(info.Env(), 2);
  out.Set(0u, Napi::Number::New(info.Env(), sv[0]));
  out.Set(1u, Napi::Number::New(info.Env(), sv[1]));
  return out;
}

struct BindJob {
  int fd;
  const std::string* dir;
  sockaddr_un sa;
  socklen_t len;
  int err;
};

// A thread of its own: unshare(CLONE_FS) gives it a working directory of its own, so a
// relative name is bound relative to `dir` without moving the whole process's cwd.
void* BindInDir(void* arg) {
  BindJob* j = static_cast<BindJob*>(arg);
  j->err = 0;
  if (unshare(CLONE_FS) < 0 || chdir(j->dir->c_str()) < 0 ||
      bind(j->fd, reinterpret_cast<sockaddr*>(&j->sa), j->len) < 0) {
    j->err = errno;
  }
  return nullptr;
}

// unixBind(fd, name, dir?): bind(2) to sun_path bytes `name`; a relative path name is
// resolved in `dir` (the name stays as given, which is what getsockname(2) returns).
Napi::Value UnixBind(const Napi::CallbackInfo& info) {
  int64_t fd;
  Napi::Buffer<uint8_t> name;
  if (!ArgInt(info, 0, &fd) || !ArgBuffer(info, 1, &name)) return {};
  BindJob j;
  j.fd = static_cast<int>(fd);
  if (!MakeAddr(info.Env(), name, &j.sa, &j.len)) return {};
  std::string what(reinterpret_cast<const char*>(name.Data()) + (name.Data()[0] == 0 ? 1 : 0),
                   name.Length() - (name.Data()[0] == 0 ? 1 : 0));
  if (info.Length() > 2 && info[2].IsString()) {
    std::string dir = info[2].As<Napi::String>().Utf8Value();
    j.dir = &dir;
    pthread_t th;
    int e = pthread_create(&th, nullptr, BindInDir, &j);
    if (e != 0) {
      ThrowErrno(info.Env(), "pthread_create", e);
      return {};
    }
    pthread_join(th, nullptr);
    if (j.err != 0) {
      ThrowErrno(info.Env(), "bind", j.err, dir + "/" + what);
      return {};
    }
  } else if (bind(j.fd, reinterpret_cast<sockaddr*>(&j.sa), j.len) < 0) {
    ThrowErrno(info.Env(), "bind", errno, what);
    return {};
  }
  return info.Env().Undefined();
}

struct BindInJob {
  int fd, root, cwd;
  sockaddr_un sa;
  socklen_t len;
  int err;
};

// A thread of its own (unshare(CLONE_FS): a root and working directory of its own): chroot(2)
// to `root` (a descriptor: fchdir, then chroot(".")) unless it is -1, fchdir(2) to `cwd`
// unless -1, then bind(2). The name is resolved as the process that lives in `root` resolves
// it, and stays as given (what getsockname(2) returns).
void* BindIn(void* arg) {
  BindInJob* j = static_cast<BindInJob*>(arg);
  j->err = 0;
  if (unshare(CLONE_FS) < 0 || (j->root >= 0 && (fchdir(j->root) < 0 || chroot(".") < 0)) ||
      (j->cwd >= 0 && fchdir(j->cwd) < 0) ||
      bind(j->fd, reinterpret_cast<sockaddr*>(&j->sa), j->len) < 0) {
    j->err = errno;
  }
  return nullptr;
}

// unixBindIn(fd, name, root, cwd): bind(2) to sun_path bytes `name` in a thread whose root is
// directory descriptor `root` and whose working directory is `cwd` (-1: ferry's own).
Napi::Value UnixBindIn(const Napi::CallbackInfo& info) {
  int64_t fd, root, cwd;
  Napi::Buffer<uint8_t> name;
  if (!ArgInt(info, 0, &fd) || !ArgBuffer(info, 1, &name) || !ArgInt(info, 2, &root) || !ArgInt(info, 3, &cwd)) return {};
  BindInJob j;
  j.fd = static_cast<int>(fd);
  j.root = static_cast<int>(root);
  j.cwd = static_cast<int>(cwd);
  if (!MakeAddr(info.Env(), name, &j.sa, &j.len)) return {};
  std::string what(reinterpret_cast<const char*>(name.Data()) + (name.Data()[0] == 0 ? 1 : 0),
                   name.Length() - (name.Data()[0] == 0 ? 1 : 0));
  pthread_t th;
  int e = pthread_create(&th, nullptr, BindIn, &j);
  if (e != 0) {
    ThrowErrno(info.Env(), "pthread_create", e);
    return {};
  }
  pthread_join(th, nullptr);
  if (j.err != 0) {
    ThrowErrno(info.Env(), "bind", j.err, what);
    return {};
  }
  return info.Env().Undefined();
}

// unixConnect(fd, name): connect(2) to sun_path bytes `name`.
Napi::Value UnixConnect(const Napi::CallbackInfo& info) {
  int64_t fd;
  Napi::Buffer<uint8_t> name;
  if (!ArgInt(info, 0, &fd) || !ArgBuffer(info, 1, &name)) return {};
  sockaddr_un sa;
  socklen_t len;
  if (!MakeAddr(info.Env(), name, &sa, &len)) return {};
  int r;
  do r = connect(static_cast<int>(fd), reinterpret_cast<sockaddr*>(&sa), len); while (r < 0 && errno == EINTR);
  if (r < 0) {
    ThrowErrno(info.Env(), "connect", errno);
    return {};
  }
  return info.Env().Undefined();
}

// unixListen(fd, backlog).
Napi::Value SockListen(const Napi::CallbackInfo& info) {
  int64_t fd, backlog;
  if (!ArgInt(info, 0, &fd) || !ArgInt(info, 1, &backlog)) return {};
  if (listen(static_cast<int>(fd), static_cast<int>(backlog)) < 0) {
    ThrowErrno(info.Env(), "listen", errno);
    return {};
  }
  return info.Env().Undefined();
}

// unixAccept(fd) -> fd (SOCK_CLOEXEC; the listener's own O_NONBLOCK decides whether it waits).
Napi::Value SockAccept(const Napi::CallbackInfo& info) {
  int64_t fd;
  if (!ArgInt(info, 0, &fd)) return {};
  int r;
  do r = accept4(static_cast<int>(fd), nullptr, nullptr, SOCK_CLOEXEC); while (r < 0 && errno == EINTR);
  if (r < 0) {
    ThrowErrno(info.Env(), "accept4", errno);
    return {};
  }
  return Napi::Number::New(info.Env(), r);
}

// unixShutdown(fd, how).
Napi::Value SockShutdown(const Napi::CallbackInfo& info) {
  int64_t fd, how;
  if (!ArgInt(info, 0, &fd) || !ArgInt(info, 1, &how)) return {};
  if (shutdown(static_cast<int>(fd), static_cast<int>(how)) < 0) {
    ThrowErrno(info.Env(), "shutdown", errno);
    return {};
  }
  return info.Env().Undefined();
}

// unixGetOpt(fd, level, name) -> int value.
Napi::Value GetSockOpt(const Napi::CallbackInfo& info) {
  int64_t fd, level, name;
  if (!ArgInt(info, 0, &fd) || !ArgInt(info, 1, &level) || !ArgInt(info, 2, &name)) return {};
  int v = 0;
  socklen_t len = sizeof v;
  if (getsockopt(static_cast<int>(fd), static_cast<int>(level), static_cast<int>(name), &v, &len) < 0) {
    ThrowErrno(info.Env(), "getsockopt", errno, "option " + std::to_string(name));
    return {};
  }
  return Napi::Number::New(info.Env(), v);
}

// unixSetOpt(fd, level, name, value) for int options.
Napi::Value SetSockOpt(const Napi::CallbackInfo& info) {
  int64_t fd, level, name, value;
  if (!ArgInt(info, 0, &fd) || !ArgInt(info, 1, &level) || !ArgInt(info, 2, &name) ||
      !ArgInt(info, 3, &value)) return {};
  int v = static_cast<int>(value);
  if (setsockopt(static_cast<int>(fd), static_cast<int>(level), static_cast<int>(name), &v, sizeof v) < 0) {
    ThrowErrno(info.Env(), "setsockopt", errno, "option " + std::to_string(name));
    return {};
  }
  return info.Env().Undefined();
}

// unixPeek(fd, max) -> {data, flags, fds, creds} for the next message at the socket's peek
// offset (recvmsg with MSG_PEEK | MSG_DONTWAIT | MSG_CMSG_CLOEXEC), or null when nothing is
// queued (EAGAIN). `flags` is msg_flags (MSG_TRUNC, MSG_CTRUNC…). MSG_PEEK installs in the
// caller a duplicate of every file an SCM_RIGHTS message carries (the same open file
// descriptions, close-on-exec): `fds` lists them, in the message's order, and the caller owns
// them. A pidfd of the sender (SCM_PIDFD, with SO_PASSPIDFD) is not a descriptor in flight:
// closed here. `creds` is the SCM_CREDENTIALS the kernel attaches when SO_PASSCRED is set
// (the sender's pid as seen from the caller's pid namespace, uid, gid), else null.
Napi::Value SockPeek(const Napi::CallbackInfo& info) {
  int64_t fd, max;
  if (!ArgInt(info, 0, &fd) || !ArgInt(info, 1, &max)) return {};
  std::vector<uint8_t> buf(static_cast<size_t>(max > 0 ? max : 1));
  // Room for SCM_MAX_FD (253) descriptors and the credentials.
  alignas(cmsghdr) char control[CMSG_SPACE(253 * sizeof(int)) + CMSG_SPACE(sizeof(ucred)) + 256];
  iovec iov = {buf.data(), buf.size()};
  msghdr mh;
  memset(&mh, 0, sizeof mh);
  mh.msg_iov = &iov;
  mh.msg_iovlen = 1;
  mh.msg_control = control;
  mh.msg_controllen = sizeof control;
  ssize_t r;
  do r = recvmsg(static_cast<int>(fd), &mh, MSG_PEEK | MSG_DONTWAIT | MSG_CMSG_CLOEXEC); while (r < 0 && errno == EINTR);
  if (r < 0) {
    if (errno == EAGAIN) return info.Env().Null();
    ThrowErrno(info.Env(), "recvmsg(MSG_PEEK)", errno);
    return {};
  }
  Napi::Env env = info.Env();
  Napi::Array fds = Napi::Array::New(env);
  Napi::Value creds = env.Null();
  uint32_t nfds = 0;
  for (cmsghdr* c = CMSG_FIRSTHDR(&mh); c != nullptr; c = CMSG_NXTHDR(&mh, c)) {
    if (c->cmsg_level != SOL_SOCKET) continue;
    if (c->cmsg_type == SCM_RIGHTS || c->cmsg_type == SCM_PIDFD) {
      size_t n = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
      const unsigned char* p = CMSG_DATA(c);
      for (size_t i = 0; i < n; i++) {
        int f;
        memcpy(&f, p + i * sizeof(int), sizeof f);
        if (c->cmsg_type == SCM_PIDFD) close(f);
        else fds.Set(nfds++, Napi::Number::New(env, f));
      }
    } else if (c->cmsg_type == SCM_CREDENTIALS && c->cmsg_len >= CMSG_LEN(sizeof(ucred))) {
      ucred u;
      memcpy(&u, CMSG_DATA(c), sizeof u);
      Napi::Object o = Napi::Object::New(env);
      o.Set("pid", Napi::Number::New(env, u.pid));
      o.Set("uid", Napi::Number::New(env, u.uid));
      o.Set("gid", Napi::Number::New(env, u.gid));
      creds = o;
    }
  }
  Napi::Object o = Napi::Object::New(env);
  size_t got = static_cast<size_t>(r) < buf.size() ? static_cast<size_t>(r) : buf.size();
  o.Set("data", Napi::Buffer<uint8_t>::Copy(env, buf.data(), got));
  o.Set("flags", Napi::Number::New(env, mh.msg_flags));
  o.Set("fds", fds);
  o.Set("creds", creds);
  return o;
}

// unixSend(fd, data, name?, fds?, creds?) -> bytes sent: sendmsg(2) with MSG_DONTWAIT |
// MSG_NOSIGNAL, to sun_path bytes `name` when given (an unconnected datagram socket; null or
// undefined: the connected peer), with the descriptors `fds` attached (SCM_RIGHTS, at most
// SCM_MAX_FD) and credentials `creds` {pid, uid, gid} (SCM_CREDENTIALS: the pid must exist in
// the caller's pid namespace; another process's pid, uid or gid needs CAP_SYS_ADMIN,
// CAP_SETUID, CAP_SETGID).
Napi::Value SockSend(const Napi::CallbackInfo& info) {
  int64_t fd;
  Napi::Buffer<uint8_t> data;
  if (!ArgInt(info, 0, &fd) || !ArgBuffer(info, 1, &data)) return {};
  Napi::Env env = info.Env();
  sockaddr_un sa;
  socklen_t len = 0;
  msghdr mh;
  memset(&mh, 0, sizeof mh);
  if (info.Length() > 2 && info[2].IsBuffer()) {
    if (!MakeAddr(env, info[2].As<Napi::Buffer<uint8_t>>(), &sa, &len)) return {};
    mh.msg_name = &sa;
    mh.msg_namelen = len;
  }
  std::vector<int> fds;
  if (info.Length() > 3 && info[3].IsArray()) {
    Napi::Array a = info[3].As<Napi::Array>();
    if (a.Length() > 253) {
      ThrowErrno(env, "sendmsg(SCM_RIGHTS)", EINVAL, std::to_string(a.Length()) + " descriptors");
      return {};
    }
    for (uint32_t i = 0; i < a.Length(); i++) {
      Napi::Value v = a.Get(i);
      if (!v.IsNumber()) {
        Napi::TypeError::New(env, "unixSend: fds must be numbers").ThrowAsJavaScriptException();
        return {};
      }
      fds.push_back(v.As<Napi::Number>().Int32Value());
    }
  }
  bool haveCreds = false;
  ucred u;
  memset(&u, 0, sizeof u);
  if (info.Length() > 4 && info[4].IsObject()) {
    Napi::Object c = info[4].As<Napi::Object>();
    u.pid = c.Get("pid").As<Napi::Number>().Int32Value();
    u.uid = c.Get("uid").As<Napi::Number>().Uint32Value();
    u.gid = c.Get("gid").As<Napi::Number>().Uint32Value();
    haveCreds = true;
  }
  alignas(cmsghdr) char control[CMSG_SPACE(253 * sizeof(int)) + CMSG_SPACE(sizeof(ucred))];
  memset(control, 0, sizeof control);
  size_t clen = 0;
  if (!fds.empty() || haveCreds) {
    mh.msg_control = control;
    mh.msg_controllen = (fds.empty() ? 0 : CMSG_SPACE(fds.size() * sizeof(int))) + (haveCreds ? CMSG_SPACE(sizeof(ucred)) : 0);
    cmsghdr* c = CMSG_FIRSTHDR(&mh);
    if (!fds.empty()) {
      c->cmsg_level = SOL_SOCKET;
      c->cmsg_type = SCM_RIGHTS;
      c->cmsg_len = CMSG_LEN(fds.size() * sizeof(int));
      memcpy(CMSG_DATA(c), fds.data(), fds.size() * sizeof(int));
      clen += CMSG_SPACE(fds.size() * sizeof(int));
      c = CMSG_NXTHDR(&mh, c);
    }
    if (haveCreds) {
      c->cmsg_level = SOL_SOCKET;
      c->cmsg_type = SCM_CREDENTIALS;
      c->cmsg_len = CMSG_LEN(sizeof(ucred));
      memcpy(CMSG_DATA(c), &u, sizeof u);
      clen += CMSG_SPACE(sizeof(ucred));
    }
    mh.msg_controllen = clen;
  }
  iovec iov = {data.Data(), data.Length()};
  mh.msg_iov = &iov;
  mh.msg_iovlen = 1;
  ssize_t r;
  do r = sendmsg(static_cast<int>(fd), &mh, MSG_DONTWAIT | MSG_NOSIGNAL); while (r < 0 && errno == EINTR);
  if (r < 0) {
    ThrowErrno(env, "sendmsg", errno);
    return {};
  }
  return Napi::Number::New(env, static_cast<double>(r));
}

}  // namespace

void InitUnix(Napi::Env env, Napi::Object exports) {
  exports.Set("unixDiag", Napi::Function::New(env, UnixDiag));
  exports.Set("unixDiagAll", Napi::Function::New(env, UnixDiagAll));
  exports.Set("unixSocket", Napi::Function::New(env, UnixSocket));
  exports.Set("unixSocketpair", Napi::Function::New(env, UnixSocketpair));
  exports.Set("unixBind", Napi::Function::New(env, UnixBind));
  exports.Set("unixBindIn", Napi::Function::New(env, UnixBindIn));
  exports.Set("unixConnect", Napi::Function::New(env, UnixConnect));
  exports.Set("unixListen", Napi::Function::New(env, SockListen));
  exports.Set("unixAccept", Napi::Function::New(env, SockAccept));
  exports.Set("unixShutdown", Napi::Function::New(env, SockShutdown));
  exports.Set("unixGetOpt", Napi::Function::New(env, GetSockOpt));
  exports.Set("unixSetOpt", Napi::Function::New(env, SetSockOpt));
  exports.Set("unixPeek", Napi::Function::New(env, SockPeek));
  exports.Set("unixSend", Napi::Function::New(env, SockSend));
}

}  // namespace ferry
