// IPv4 and IPv6 sockets (TCP, UDP, UDP-Lite, raw, ping): reading and rebuilding their state.
//
// Wraps getxattr(2) "system.sockprotoname" (sockfs names the protocol of the socket behind a
// descriptor: "TCP", "TCPv6", "UDP", "UDPv6", "UNIX-STREAM"…; works on /proc/PID/fd/N),
// socket(2) (SOCK_CLOEXEC always added), getsockopt(2)/setsockopt(2) (raw bytes or an int),
// getsockname(2)/getpeername(2), bind(2), connect(2), listen(2), recv(2) (MSG_OOB: the urgent byte), recvfrom(2) with MSG_PEEK
// (nothing is consumed; with TCP_REPAIR_QUEUE set, a socket in repair mode peeks its send or
// receive queue, tcp(7)), sendto(2) (in repair mode it appends to the selected queue without
// transmitting anything), and ioctl(2) SIOCINQ / SIOCOUTQ / SIOCOUTQNSD (bytes unread, bytes
// not yet acknowledged, bytes not yet sent).
//
// Also getsockopt(SO_GET_FILTER) and setsockopt(SO_ATTACH_FILTER) for a classic BPF socket
// filter (socket(7), filter.rst: SO_GET_FILTER counts in instructions, not bytes), and
// SO_ATTACH_REUSEPORT_CBPF for a classic program choosing the member of a SO_REUSEPORT group;
// NETLINK_SOCK_DIAG with AF_INET/AF_INET6 (sock_diag(7), linux/inet_diag.h) for what
// getsockopt does not say: a socket's shutdown bits (INET_DIAG_SHUTDOWN), whether a TCP socket
// holds TCP_MD5SIG keys (INET_DIAG_MD5SIG); and SOCK_DESTROY of one TCP socket by its
// 4-tuple (tcp_abort: a TIME_WAIT entry is descheduled, anything else reset).
//
// Addresses cross into JS as {family, address, port, flowinfo, scopeId}: family AF_INET (2) or
// AF_INET6 (10), address in inet_ntop(3) text.
#include <napi.h>

#include <arpa/inet.h>
#include <errno.h>
#include <linux/filter.h>
#include <linux/inet_diag.h>
#include <linux/netlink.h>
#include <linux/sock_diag.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <algorithm>
#include <vector>

#include "errors.h"
#include "sockdiag.h"

namespace ferry {
namespace {

std::string FdText(int64_t fd) { return "fd " + std::to_string(fd); }

// sockaddr -> {family, address, port, flowinfo, scopeId}; null for anything not AF_INET/AF_INET6.
Napi::Value AddrToJs(Napi::Env env, const sockaddr_storage& ss) {
  char text[INET6_ADDRSTRLEN] = "";
  Napi::Object o = Napi::Object::New(env);
  if (ss.ss_family == AF_INET) {
    const auto* a = reinterpret_cast<const sockaddr_in*>(&ss);
    inet_ntop(AF_INET, &a->sin_addr, text, sizeof text);
    o.Set("family", AF_INET);
    o.Set("address", text);
    o.Set("port", ntohs(a->sin_port));
    o.Set("flowinfo", 0);
    o.Set("scopeId", 0);
  } else if (ss.ss_family == AF_INET6) {
    const auto* a = reinterpret_cast<const sockaddr_in6*>(&ss);
    inet_ntop(AF_INET6, &a->sin6_addr, text, sizeof text);
    o.Set("family", AF_INET6);
    o.Set("address", text);
    o.Set("port", ntohs(a->sin6_port));
    o.Set("flowinfo", ntohl(a->sin6_flowinfo));
    o.Set("scopeId", a->sin6_scope_id);
  } else {
    return env.Null();
  }
  return o;
}

// JS address object at info[i] -> sockaddr; throws a TypeError on anything malformed.
bool ArgAddr(const Napi::CallbackInfo& info, size_t i, sockaddr_storage* ss, socklen_t* len) {
  memset(ss, 0, sizeof *ss);
  if (info.Length() <= i || !info[i].IsObject()) {
    ThrowType(info.Env(), "expected an address {family, address, port}");
    return false;
  }
  Napi::Object o = info[i].As<Napi::Object>();
  Napi::Value fam = o.Get("family"), addr = o.Get("address"), port = o.Get("port");
  if (!fam.IsNumber() || !addr.IsString() || !port.IsNumber()) {
    ThrowType(info.Env(), "address needs family (number), address (string), port (number)");
    return false;
  }
  std::string text = addr.As<Napi::String>().Utf8Value();
  int family = fam.As<Napi::Number>().Int32Value();
  uint16_t p = static_cast<uint16_t>(port.As<Napi::Number>().Uint32Value());
  if (family == AF_INET) {
    auto* a = reinterpret_cast<sockaddr_in*>(ss);
    a->sin_family = AF_INET;
    a->sin_port = htons(p);
    if (inet_pton(AF_INET, text.c_str(), &a->sin_addr) != 1) {
      ThrowType(info.Env(), "bad IPv4 address " + text);
      return false;
    }
    *len = sizeof *a;
    return true;
  }
  if (family == AF_INET6) {
    auto* a = reinterpret_cast<sockaddr_in6*>(ss);
    a->sin6_family = AF_INET6;
    a->sin6_port = htons(p);
    Napi::Value fl = o.Get("flowinfo"), sc = o.Get("scopeId");
    if (fl.IsNumber()) a->sin6_flowinfo = htonl(fl.As<Napi::Number>().Uint32Value());
    if (sc.IsNumber()) a->sin6_scope_id = sc.As<Napi::Number>().Uint32Value();
    if (inet_pton(AF_INET6, text.c_str(), &a->sin6_addr) != 1) {
      ThrowType(info.Env(), "bad IPv6 address " + text);
      return false;
    }
    *len = sizeof *a;
    return true;
  }
  ThrowType(info.Env(), "address family must be AF_INET or AF_INET6");
  return false;
}

// sockProtoName(path) -> "TCP" | "TCPv6" | "UDP" | … (getxattr system.sockprotoname).
Napi::Value SockProtoName(const Napi::CallbackInfo& info) {
  if (info.Length() < 1 || !info[0].IsString()) {
    ThrowType(info.Env(), "sockProtoName(path: string)");
    return {};
  }
  std::string path = info[0].As<Napi::String>().Utf8Value();
  char buf[64];
  ssize_t n = getxattr(path.c_str(), "system.sockprotoname", buf, sizeof buf - 1);
  if (n < 0) {
    ThrowErrno(info.Env(), "getxattr", errno, path);
    return {};
  }
  buf[n] = 0;
  return Napi::String::New(info.Env(), buf);  // the kernel includes the NUL
}

// socket(family, type, protocol) -> fd.
Napi::Value Socket(const Napi::CallbackInfo& info) {
  int64_t family, type, proto = 0;
  if (!ArgInt(info, 0, &family) || !ArgInt(info, 1, &type)) return {};
  if (info.Length() > 2 && !ArgInt(info, 2, &proto)) return {};
  int fd = socket(static_cast<int>(family), static_cast<int>(type) | SOCK_CLOEXEC, static_cast<int>(proto));
  if (fd < 0) {
    ThrowErrno(info.Env(), "socket", errno);
    return {};
  }
  return Napi::Number::New(info.Env(), fd);
}

// getSockOpt(fd, level, name, maxLen, input?) -> Buffer (the length the kernel returned).
// `input` is copied into the option buffer first: a few options read a request from it
// (MCAST_MSFILTER: the group and interface whose source filter to return).
Napi::Value GetSockOpt(const Napi::CallbackInfo& info) {
  int64_t fd, level, name, max;
  if (!ArgInt(info, 0, &fd) || !ArgInt(info, 1, &level) || !ArgInt(info, 2, &name) ||
      !ArgInt(info, 3, &max)) return {};
  if (max < 0 || max > 65536) {
    ThrowType(info.Env(), "getSockOpt: maxLen out of range");
    return {};
  }
  std::vector<uint8_t> buf(static_cast<size_t>(max) + 1);
  if (info.Length() > 4 && !info[4].IsUndefined()) {
    Napi::Buffer<uint8_t> in;
    if (!ArgBuffer(info, 4, &in)) return {};
    memcpy(buf.data(), in.Data(), std::min(in.Length(), static_cast<size_t>(max)));
  }
  socklen_t len = static_cast<socklen_t>(max);
  if (getsockopt(static_cast<int>(fd), static_cast<int>(level), static_cast<int>(name), buf.data(), &len) < 0) {
    ThrowErrno(info.Env(), "getsockopt", errno, FdText(fd) + " option " + std::to_string(level) + "/" + std::to_string(name));
    return {};
  }
  // Some options answer the length they would need (NETLINK_LIST_MEMBERSHIPS): never more
  // than the buffer holds.
  return Napi::Buffer<uint8_t>::Copy(info.Env(), buf.data(), std::min<size_t>(len, static_cast<size_t>(max)));
}

// setSockOpt(fd, level, name, Buffer).
Napi::Value SetSockOpt(const Napi::CallbackInfo& info) {
  int64_t fd, level, name;
  Napi::Buffer<uint8_t> b;
  if (!ArgInt(info, 0, &fd) || !ArgInt(info, 1, &level) || !ArgInt(info, 2, &name) || !ArgBuffer(info, 3, &b)) return {};
  if (setsockopt(static_cast<int>(fd), static_cast<int>(level), static_cast<int>(name), b.Data(),
                 static_cast<socklen_t>(b.Length())) < 0) {
    ThrowErrno(info.Env(), "setsockopt", errno, FdText(fd) + " option " + std::to_string(level) + "/" + std::to_string(name));
    return {};
  }
  return info.Env().Undefined();
}

// getSockInt(fd, level, name) -> int.
Napi::Value GetSockInt(const Napi::CallbackInfo& info) {
  int64_t fd, level, name;
  if (!ArgInt(info, 0, &fd) || !ArgInt(info, 1, &level) || !ArgInt(info, 2, &name)) return {};
  int v = 0;
  socklen_t len = sizeof v;
  if (getsockopt(static_cast<int>(fd), static_cast<int>(level), static_cast<int>(name), &v, &len) < 0) {
    ThrowErrno(info.Env(), "getsockopt", errno, FdText(fd) + " option " + std::to_string(level) + "/" + std::to_string(name));
    return {};
  }
  return Napi::Number::New(info.Env(), v);
}

// setSockInt(fd, level, name, value).
Napi::Value SetSockInt(const Napi::CallbackInfo& info) {
  int64_t fd, level, name, value;
  if (!ArgInt(info, 0, &fd) || !ArgInt(info, 1, &level) || !ArgInt(info, 2, &name) || !ArgInt(info, 3, &value)) return {};
  int v = static_cast<int>(value);
  if (setsockopt(static_cast<int>(fd), static_cast<int>(level), static_cast<int>(name), &v, sizeof v) < 0) {
    ThrowErrno(info.Env(), "setsockopt", errno, FdText(fd) + " option " + std::to_string(level) + "/" + std::to_string(name));
    return {};
  }
  return info.Env().Undefined();
}

// sockName(fd, peer) -> address, or null (peer: ENOTCONN; an address of another family).
Napi::Value SockName(const Napi::CallbackInfo& info) {
  int64_t fd;
  if (!ArgInt(info, 0, &fd)) return {};
  bool peer = info.Length() > 1 && info[1].ToBoolean().Value();
  sockaddr_storage ss;
  memset(&ss, 0, sizeof ss);
  socklen_t len = sizeof ss;
  int r = peer ? getpeername(static_cast<int>(fd), reinterpret_cast<sockaddr*>(&ss), &len)
               : getsockname(static_cast<int>(fd), reinterpret_cast<sockaddr*>(&ss), &len);
  if (r < 0) {
    if (peer && errno == ENOTCONN) return info.Env().Null();
    ThrowErrno(info.Env(), peer ? "getpeername" : "getsockname", errno, FdText(fd));
    return {};
  }
  return AddrToJs(info.Env(), ss);
}

// sockBind(fd, address) / sockConnect(fd, address).
Napi::Value BindOrConnect(const Napi::CallbackInfo& info, bool connect_) {
  int64_t fd;
  sockaddr_storage ss;
  socklen_t len;
  if (!ArgInt(info, 0, &fd) || !ArgAddr(info, 1, &ss, &len)) return {};
  int r = connect_ ? connect(static_cast<int>(fd), reinterpret_cast<sockaddr*>(&ss), len)
                   : bind(static_cast<int>(fd), reinterpret_cast<sockaddr*>(&ss), len);
  if (r < 0) {
    ThrowErrno(info.Env(), connect_ ? "connect" : "bind", errno, FdText(fd));
    return {};
  }
  return info.Env().Undefined();
}
Napi::Value SockBind(const Napi::CallbackInfo& info) { return BindOrConnect(info, false); }
Napi::Value SockConnect(const Napi::CallbackInfo& info) { return BindOrConnect(info, true); }

// sockListen(fd, backlog).
Napi::Value SockListen(const Napi::CallbackInfo& info) {
  int64_t fd, backlog;
  if (!ArgInt(info, 0, &fd) || !ArgInt(info, 1, &backlog)) return {};
  if (listen(static_cast<int>(fd), static_cast<int>(backlog)) < 0) {
    ThrowErrno(info.Env(), "listen", errno, FdText(fd));
    return {};
  }
  return info.Env().Undefined();
}

// sockPeek(fd, maxLen, extraFlags) -> {data, from}: recvfrom(2) with MSG_PEEK | MSG_DONTWAIT;
// EAGAIN gives null (nothing queued).
Napi::Value SockPeek(const Napi::CallbackInfo& info) {
  int64_t fd, max, flags = 0;
  if (!ArgInt(info, 0, &fd) || !ArgInt(info, 1, &max)) return {};
  if (info.Length() > 2 && !ArgInt(info, 2, &flags)) return {};
  if (max < 0 || max > (1LL << 30)) {
    ThrowType(info.Env(), "sockPeek: maxLen out of range");
    return {};
  }
  std::vector<uint8_t> buf(static_cast<size_t>(max) + 1);
  sockaddr_storage ss;
  memset(&ss, 0, sizeof ss);
  socklen_t slen = sizeof ss;
  ssize_t n = recvfrom(static_cast<int>(fd), buf.data(), static_cast<size_t>(max),
                       MSG_PEEK | MSG_DONTWAIT | static_cast<int>(flags), reinterpret_cast<sockaddr*>(&ss), &slen);
  if (n < 0) {
    if (errno == EAGAIN) return info.Env().Null();
    ThrowErrno(info.Env(), "recvfrom(MSG_PEEK)", errno, FdText(fd));
    return {};
  }
  Napi::Object o = Napi::Object::New(info.Env());
  o.Set("data", Napi::Buffer<uint8_t>::Copy(info.Env(), buf.data(), static_cast<size_t>(n)));
  o.Set("from", slen > 0 ? AddrToJs(info.Env(), ss) : info.Env().Null());
  return o;
}

// sockRecv(fd, maxLen, flags) -> Buffer: recv(2) with MSG_DONTWAIT | flags, consuming what it
// reads (MSG_OOB takes a TCP socket's urgent byte); EAGAIN gives null.
Napi::Value SockRecv(const Napi::CallbackInfo& info) {
  int64_t fd, max, flags;
  if (!ArgInt(info, 0, &fd) || !ArgInt(info, 1, &max) || !ArgInt(info, 2, &flags)) return {};
  if (max < 0 || max > (1LL << 30)) {
    ThrowType(info.Env(), "sockRecv: maxLen out of range");
    return {};
  }
  std::vector<uint8_t> buf(static_cast<size_t>(max) + 1);
  ssize_t n = recv(static_cast<int>(fd), buf.data(), static_cast<size_t>(max), MSG_DONTWAIT | static_cast<int>(flags));
  if (n < 0) {
    if (errno == EAGAIN) return info.Env().Null();
    ThrowErrno(info.Env(), "recv", errno, FdText(fd));
    return {};
  }
  return Napi::Buffer<uint8_t>::Copy(info.Env(), buf.data(), static_cast<size_t>(n));
}

// sockSend(fd, data, flags, address?) -> bytes sent (sendto(2)).
Napi::Value SockSend(const Napi::CallbackInfo& info) {
  int64_t fd, flags;
  Napi::Buffer<uint8_t> b;
  if (!ArgInt(info, 0, &fd) || !ArgBuffer(info, 1, &b) || !ArgInt(info, 2, &flags)) return {};
  sockaddr_storage ss;
  socklen_t len = 0;
  bool to = info.Length() > 3 && !info[3].IsUndefined() && !info[3].IsNull();
  if (to && !ArgAddr(info, 3, &ss, &len)) return {};
  ssize_t n = sendto(static_cast<int>(fd), b.Data(), b.Length(), static_cast<int>(flags) | MSG_NOSIGNAL,
                     to ? reinterpret_cast<sockaddr*>(&ss) : nullptr, to ? len : 0);
  if (n < 0) {
    ThrowErrno(info.Env(), "sendto", errno, FdText(fd));
    return {};
  }
  return Napi::Number::New(info.Env(), static_cast<double>(n));
}

// sockIoctlInt(fd, request) -> int: SIOCINQ, SIOCOUTQ, SIOCOUTQNSD.
Napi::Value SockIoctlInt(const Napi::CallbackInfo& info) {
  int64_t fd, req;
  if (!ArgInt(info, 0, &fd) || !ArgInt(info, 1, &req)) return {};
  int v = 0;
  if (ioctl(static_cast<int>(fd), static_cast<unsigned long>(req), &v) < 0) {
    ThrowErrno(info.Env(), "ioctl", errno, FdText(fd) + " request " + std::to_string(req));
    return {};
  }
  return Napi::Number::New(info.Env(), v);
}

// tcpDestroy(local, remote): SOCK_DESTROY of the TCP socket local -> remote (both of one
// family; IPv4-mapped IPv6 addresses find an IPv4 entry). The answer's error, if any, is thrown
// (ENOENT: no such socket; EOPNOTSUPP: no CONFIG_INET_DIAG_DESTROY; EPERM: no CAP_NET_ADMIN).
Napi::Value TcpDestroy(const Napi::CallbackInfo& info) {
  sockaddr_storage l, r;
  socklen_t ll, rl;
  if (!ArgAddr(info, 0, &l, &ll) || !ArgAddr(info, 1, &r, &rl)) return {};
  if (l.ss_family != r.ss_family) {
    ThrowType(info.Env(), "tcpDestroy: both addresses must be of one family");
    return {};
  }
  inet_diag_req_v2 req;
  memset(&req, 0, sizeof req);
  req.sdiag_family = static_cast<uint8_t>(l.ss_family);
  req.sdiag_protocol = IPPROTO_TCP;
  req.idiag_states = ~0U;
  req.id.idiag_cookie[0] = INET_DIAG_NOCOOKIE;
  req.id.idiag_cookie[1] = INET_DIAG_NOCOOKIE;
  if (l.ss_family == AF_INET) {
    const auto* a = reinterpret_cast<const sockaddr_in*>(&l);
    const auto* b = reinterpret_cast<const sockaddr_in*>(&r);
    req.id.idiag_sport = a->sin_port;
    req.id.idiag_dport = b->sin_port;
    memcpy(req.id.idiag_src, &a->sin_addr, 4);
    memcpy(req.id.idiag_dst, &b->sin_addr, 4);
  } else {
    const auto* a = reinterpret_cast<const sockaddr_in6*>(&l);
    const auto* b = reinterpret_cast<const sockaddr_in6*>(&r);
    req.id.idiag_sport = a->sin6_port;
    req.id.idiag_dport = b->sin6_port;
    memcpy(req.id.idiag_src, &a->sin6_addr, 16);
    memcpy(req.id.idiag_dst, &b->sin6_addr, 16);
  }
  int e = SockDiagQuery(SOCK_DESTROY, &req, sizeof req, NLM_F_ACK, [](const void*, size_t) {});
  if (e != 0) {
    ThrowErrno(info.Env(), "SOCK_DESTROY", e);
    return {};
  }
  return info.Env().Undefined();
}

// getSockFilter(fd) -> Buffer of struct sock_filter[] (8 bytes each), empty when no filter is
// attached. Asked with optlen 0 the kernel answers the number of instructions; then read with
// room for that many (a filter replaced in between answers EINVAL: asked again). An eBPF
// program (SO_ATTACH_BPF) has no classic form: EACCES.
Napi::Value GetSockFilter(const Napi::CallbackInfo& info) {
  int64_t fd;
  if (!ArgInt(info, 0, &fd)) return {};
  for (int attempt = 0; attempt < 4; attempt++) {
    socklen_t count = 0;
    if (getsockopt(static_cast<int>(fd), SOL_SOCKET, SO_GET_FILTER, nullptr, &count) < 0) {
      ThrowErrno(info.Env(), "getsockopt(SO_GET_FILTER)", errno, FdText(fd));
      return {};
    }
    if (count == 0) return Napi::Buffer<uint8_t>::New(info.Env(), 0);
    if (count > BPF_MAXINSNS) {
      ThrowErrno(info.Env(), "getsockopt(SO_GET_FILTER)", E2BIG, FdText(fd));
      return {};
    }
    std::vector<sock_filter> prog(count);
    socklen_t len = count;
    if (getsockopt(static_cast<int>(fd), SOL_SOCKET, SO_GET_FILTER, prog.data(), &len) < 0) {
      if (errno == EINVAL) continue;
      ThrowErrno(info.Env(), "getsockopt(SO_GET_FILTER)", errno, FdText(fd));
      return {};
    }
    return Napi::Buffer<uint8_t>::Copy(info.Env(), reinterpret_cast<const uint8_t*>(prog.data()),
                                       static_cast<size_t>(len) * sizeof(sock_filter));
  }
  ThrowErrno(info.Env(), "getsockopt(SO_GET_FILTER)", EAGAIN, FdText(fd));
  return {};
}

// attachSockFilter(fd, insns, reuseport?): setsockopt(SO_ATTACH_FILTER, or with `reuseport`
// SO_ATTACH_REUSEPORT_CBPF: the program then picks the member of the socket's SO_REUSEPORT
// group by index) with struct sock_fprog over the struct sock_filter[] in `insns` (a multiple
// of 8 bytes, 1 to BPF_MAXINSNS instructions; the kernel checks the program itself).
Napi::Value AttachSockFilter(const Napi::CallbackInfo& info) {
  int64_t fd;
  Napi::Buffer<uint8_t> b;
  if (!ArgInt(info, 0, &fd) || !ArgBuffer(info, 1, &b)) return {};
  bool reuseport = info.Length() > 2 && info[2].ToBoolean().Value();
  int opt = reuseport ? SO_ATTACH_REUSEPORT_CBPF : SO_ATTACH_FILTER;
  size_t count = b.Length() / sizeof(sock_filter);
  if (b.Length() % sizeof(sock_filter) != 0 || count == 0 || count > BPF_MAXINSNS) {
    ThrowType(info.Env(), "attachSockFilter: insns must hold 1 to 4096 struct sock_filter");
    return {};
  }
  std::vector<sock_filter> prog(count);
  memcpy(prog.data(), b.Data(), b.Length());
  sock_fprog fprog;
  fprog.len = static_cast<unsigned short>(count);
  fprog.filter = prog.data();
  if (setsockopt(static_cast<int>(fd), SOL_SOCKET, opt, &fprog, sizeof fprog) < 0) {
    ThrowErrno(info.Env(), reuseport ? "setsockopt(SO_ATTACH_REUSEPORT_CBPF)" : "setsockopt(SO_ATTACH_FILTER)", errno, FdText(fd));
    return {};
  }
  return info.Env().Undefined();
}

// inetDiag(family, protocol) -> [{ino, state, shutdown, md5}]: every socket of that family and
// protocol in the caller's network namespace (a dump: an exact request needs the addresses,
// and one dump answers for all the sockets of a checkpoint).
Napi::Value InetDiag(const Napi::CallbackInfo& info) {
  int64_t family, protocol;
  if (!ArgInt(info, 0, &family) || !ArgInt(info, 1, &protocol)) return {};
  inet_diag_req_v2 req;
  memset(&req, 0, sizeof req);
  req.sdiag_family = static_cast<uint8_t>(family);
  req.sdiag_protocol = static_cast<uint8_t>(protocol);
  req.idiag_states = ~0u;
  // TCP's auxiliary attributes (INET_DIAG_MD5SIG, INET_DIAG_ULP_INFO) come with INET_DIAG_INFO.
  if (protocol == IPPROTO_TCP) req.idiag_ext = 1 << (INET_DIAG_INFO - 1);
  Napi::Array out = Napi::Array::New(info.Env());
  uint32_t count = 0;
  int e = SockDiagQuery(SOCK_DIAG_BY_FAMILY, &req, sizeof req, NLM_F_DUMP, [&](const void* payload, size_t plen) {
    if (plen < sizeof(inet_diag_msg)) return;
    const inet_diag_msg* m = static_cast<const inet_diag_msg*>(payload);
    Napi::Object o = Napi::Object::New(info.Env());
    o.Set("ino", Napi::Number::New(info.Env(), m->idiag_inode));
    o.Set("state", Napi::Number::New(info.Env(), m->idiag_state));
    o.Set("shutdown", Napi::Number::New(info.Env(), 0));
    o.Set("md5", Napi::Boolean::New(info.Env(), false));
    const char* p = reinterpret_cast<const char*>(m) + NLMSG_ALIGN(sizeof *m);
    size_t left = plen > NLMSG_ALIGN(sizeof *m) ? plen - NLMSG_ALIGN(sizeof *m) : 0;
    while (left >= sizeof(nlattr)) {
      const nlattr* a = reinterpret_cast<const nlattr*>(p);
      if (a->nla_len < sizeof(nlattr) || a->nla_len > left) break;
      if ((a->nla_type & NLA_TYPE_MASK) == INET_DIAG_SHUTDOWN && a->nla_len >= NLA_HDRLEN + 1) {
        o.Set("shutdown", Napi::Number::New(info.Env(), *reinterpret_cast<const uint8_t*>(p + NLA_HDRLEN)));
      }
      // TCP: the socket holds TCP_MD5SIG keys (sent to a CAP_NET_ADMIN requester only).
      if ((a->nla_type & NLA_TYPE_MASK) == INET_DIAG_MD5SIG) o.Set("md5", Napi::Boolean::New(info.Env(), true));
      size_t step = NLA_ALIGN(a->nla_len);
      if (step > left) break;
      p += step;
      left -= step;
    }
    out.Set(count++, o);
  });
  if (e != 0) {
    ThrowErrno(info.Env(), "sock_diag(inet)", e, "family " + std::to_string(family) + " protocol " + std::to_string(protocol));
    return {};
  }
  return out;
}

}  // namespace

void InitInet(Napi::Env env, Napi::Object exports) {
  exports.Set("sockProtoName", Napi::Function::New(env, SockProtoName));
  exports.Set("socket", Napi::Function::New(env, Socket));
  exports.Set("getSockOpt", Napi::Function::New(env, GetSockOpt));
  exports.Set("setSockOpt", Napi::Function::New(env, SetSockOpt));
  exports.Set("getSockInt", Napi::Function::New(env, GetSockInt));
  exports.Set("setSockInt", Napi::Function::New(env, SetSockInt));
  exports.Set("sockName", Napi::Function::New(env, SockName));
  exports.Set("sockBind", Napi::Function::New(env, SockBind));
  exports.Set("sockConnect", Napi::Function::New(env, SockConnect));
  exports.Set("sockListen", Napi::Function::New(env, SockListen));
  exports.Set("sockPeek", Napi::Function::New(env, SockPeek));
  exports.Set("sockRecv", Napi::Function::New(env, SockRecv));
  exports.Set("sockSend", Napi::Function::New(env, SockSend));
  exports.Set("sockIoctlInt", Napi::Function::New(env, SockIoctlInt));
  exports.Set("getSockFilter", Napi::Function::New(env, GetSockFilter));
  exports.Set("attachSockFilter", Napi::Function::New(env, AttachSockFilter));
  exports.Set("inetDiag", Napi::Function::New(env, InetDiag));
  exports.Set("tcpDestroy", Napi::Function::New(env, TcpDestroy));
}

}  // namespace ferry
