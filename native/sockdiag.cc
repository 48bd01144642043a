// Netlink and packet sockets (netlink(7), packet(7)): what the kernel tells about them, and
// building them again.
//
// Wraps NETLINK_SOCK_DIAG (sock_diag(7)) as a plain transport: the caller hands the
// family-specific request (struct netlink_diag_req, packet_diag_req…, linux/*_diag.h) and gets
// every answer's payload back as bytes (the family's *_diag_msg followed by its attributes);
// the layouts are read in TS. AF_NETLINK and AF_PACKET answer dumps only (NLM_F_DUMP), one
// message per socket of the caller's network namespace.
// Also getsockname(2)/getpeername(2), bind(2) and connect(2) with struct sockaddr_nl (a port
// id and a group mask) and struct sockaddr_ll / sockaddr_pkt (protocol and interface; the
// SOCK_PACKET form names the interface), ioctl(2) SIOCGIFNAME / SIOCGIFINDEX (netdevice(7):
// interface index <-> name, in the calling thread's network namespace). Socket filters are
// inet.cc's (getSockFilter, attachSockFilter): they work on every socket family.
#include <napi.h>

#include <arpa/inet.h>
#include <errno.h>
#include <linux/filter.h>
#include <linux/if_packet.h>
#include <linux/netlink.h>
#include <linux/sock_diag.h>
#include <net/if.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <string>
#include <vector>

#include "errors.h"
#include "sockdiag.h"

namespace ferry {
namespace {

std::string FdText(int64_t fd) { return "fd " + std::to_string(fd); }

// sockDiagDump(request) -> [payload…]: one SOCK_DIAG_BY_FAMILY dump. `request` is the
// family's request struct (its first byte is sdiag_family); each answer is returned without
// its nlmsghdr. Bounded by what the namespace holds; 64 KiB reads.
Napi::Value SockDiagDump(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Buffer<uint8_t> req;
  if (!ArgBuffer(info, 0, &req)) return {};
  if (req.Length() < 2 || req.Length() > 256) {
    ThrowType(env, "sockDiagDump: request of 2..256 bytes");
    return {};
  }
  Napi::Array out = Napi::Array::New(env);
  uint32_t n = 0;
  int e = SockDiagQuery(SOCK_DIAG_BY_FAMILY, req.Data(), req.Length(), NLM_F_DUMP, [&](const void* p, size_t len) {
    out.Set(n++, Napi::Buffer<uint8_t>::Copy(env, static_cast<const uint8_t*>(p), len));
  });
  if (e != 0) {
    ThrowErrno(env, "sock_diag", e, "family " + std::to_string(req.Data()[0]));
    return {};
  }
  return out;
}

// netlinkName(fd, peer) -> {portid, groups}: getsockname(2) (the bound port id, 0 when not
// bound yet, and the first 32 groups as a mask) or getpeername(2) (dst_portid, dst_group as
// a mask; zeros when not connected).
Napi::Value NetlinkName(const Napi::CallbackInfo& info) {
  int64_t fd;
  if (!ArgInt(info, 0, &fd)) return {};
  bool peer = info.Length() > 1 && info[1].ToBoolean().Value();
  sockaddr_nl sa;
  memset(&sa, 0, sizeof sa);
  socklen_t len = sizeof sa;
  int r = peer ? getpeername(static_cast<int>(fd), reinterpret_cast<sockaddr*>(&sa), &len)
               : getsockname(static_cast<int>(fd), reinterpret_cast<sockaddr*>(&sa), &len);
  if (r < 0) {
    ThrowErrno(info.Env(), peer ? "getpeername" : "getsockname", errno, FdText(fd));
    return {};
  }
  Napi::Object o = Napi::Object::New(info.Env());
  o.Set("portid", Napi::Number::New(info.Env(), sa.nl_pid));
  o.Set("groups", Napi::Number::New(info.Env(), sa.nl_groups));
  return o;
}

// netlinkBind(fd, portid, groups) / netlinkConnect(fd, portid, groups): sockaddr_nl.
Napi::Value NetlinkAddr(const Napi::CallbackInfo& info, bool connect_) {
  int64_t fd, portid, groups;
  if (!ArgInt(info, 0, &fd) || !ArgInt(info, 1, &portid) || !ArgInt(info, 2, &groups)) return {};
  sockaddr_nl sa;
  memset(&sa, 0, sizeof sa);
  sa.nl_family = AF_NETLINK;
  sa.nl_pid = static_cast<uint32_t>(portid);
  sa.nl_groups = static_cast<uint32_t>(groups);
  int r = connect_ ? connect(static_cast<int>(fd), reinterpret_cast<sockaddr*>(&sa), sizeof sa)
                   : bind(static_cast<int>(fd), reinterpret_cast<sockaddr*>(&sa), sizeof sa);
  if (r < 0) {
    ThrowErrno(info.Env(), connect_ ? "connect" : "bind", errno, FdText(fd) + " port id " + std::to_string(portid));
    return {};
  }
  return info.Env().Undefined();
}
Napi::Value NetlinkBind(const Napi::CallbackInfo& info) { return NetlinkAddr(info, false); }
Napi::Value NetlinkConnect(const Napi::CallbackInfo& info) { return NetlinkAddr(info, true); }

// packetBind(fd, protocol, ifindex, device?): bind(2) with sockaddr_ll {sll_protocol =
// htons(protocol), sll_ifindex}; with `device` (a SOCK_PACKET socket) sockaddr_pkt naming the
// interface instead (`protocol` unused: such a socket keeps the one socket(2) gave it).
Napi::Value PacketBind(const Napi::CallbackInfo& info) {
  int64_t fd, protocol, ifindex;
  if (!ArgInt(info, 0, &fd) || !ArgInt(info, 1, &protocol) || !ArgInt(info, 2, &ifindex)) return {};
  int r;
  if (info.Length() > 3 && info[3].IsString()) {
    std::string dev = info[3].As<Napi::String>().Utf8Value();
    sockaddr_pkt sp;
    memset(&sp, 0, sizeof sp);
    if (dev.size() >= sizeof sp.spkt_device) {
      ThrowType(info.Env(), "packetBind: device name too long");
      return {};
    }
    sp.spkt_family = AF_PACKET;
    memcpy(sp.spkt_device, dev.data(), dev.size());
    // The kernel reads a struct sockaddr's worth (family and 14 bytes of name) and keeps
    // the protocol the socket was made with.
    r = bind(static_cast<int>(fd), reinterpret_cast<sockaddr*>(&sp), sizeof(sockaddr));
  } else {
    sockaddr_ll sl;
    memset(&sl, 0, sizeof sl);
    sl.sll_family = AF_PACKET;
    sl.sll_protocol = htons(static_cast<uint16_t>(protocol));
    sl.sll_ifindex = static_cast<int>(ifindex);
    r = bind(static_cast<int>(fd), reinterpret_cast<sockaddr*>(&sl), sizeof sl);
  }
  if (r < 0) {
    ThrowErrno(info.Env(), "bind", errno, FdText(fd) + " interface " + std::to_string(ifindex));
    return {};
  }
  return info.Env().Undefined();
}

// ifName(index) -> name, or null when no interface of the thread's namespace has it
// (SIOCGIFNAME on a throwaway datagram socket).
Napi::Value IfName(const Napi::CallbackInfo& info) {
  int64_t index;
  if (!ArgInt(info, 0, &index)) return {};
  int s = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (s < 0) {
    ThrowErrno(info.Env(), "socket", errno);
    return {};
  }
  ifreq ifr;
  memset(&ifr, 0, sizeof ifr);
  ifr.ifr_ifindex = static_cast<int>(index);
  int r = ioctl(s, SIOCGIFNAME, &ifr);
  int e = errno;
  close(s);
  if (r < 0) {
    if (e == ENODEV) return info.Env().Null();
    ThrowErrno(info.Env(), "ioctl(SIOCGIFNAME)", e, "index " + std::to_string(index));
    return {};
  }
  ifr.ifr_name[IFNAMSIZ - 1] = 0;
  return Napi::String::New(info.Env(), ifr.ifr_name);
}

// ifIndex(name) -> index, or 0 when no interface of the thread's namespace has it (SIOCGIFINDEX).
Napi::Value IfIndex(const Napi::CallbackInfo& info) {
  if (info.Length() < 1 || !info[0].IsString()) {
    ThrowType(info.Env(), "ifIndex(name: string)");
    return {};
  }
  std::string name = info[0].As<Napi::String>().Utf8Value();
  if (name.empty() || name.size() >= IFNAMSIZ) return Napi::Number::New(info.Env(), 0);
  int s = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (s < 0) {
    ThrowErrno(info.Env(), "socket", errno);
    return {};
  }
  ifreq ifr;
  memset(&ifr, 0, sizeof ifr);
  memcpy(ifr.ifr_name, name.data(), name.size());
  int r = ioctl(s, SIOCGIFINDEX, &ifr);
  int e = errno;
  close(s);
  if (r < 0) {
    if (e == ENODEV) return Napi::Number::New(info.Env(), 0);
    ThrowErrno(info.Env(), "ioctl(SIOCGIFINDEX)", e, name);
    return {};
  }
  return Napi::Number::New(info.Env(), ifr.ifr_ifindex);
}

}  // namespace

void InitSockdiag(Napi::Env env, Napi::Object exports) {
  exports.Set("sockDiagDump", Napi::Function::New(env, SockDiagDump));
  exports.Set("netlinkName", Napi::Function::New(env, NetlinkName));
  exports.Set("netlinkBind", Napi::Function::New(env, NetlinkBind));
  exports.Set("netlinkConnect", Napi::Function::New(env, NetlinkConnect));
  exports.Set("packetBind", Napi::Function::New(env, PacketBind));
  exports.Set("ifName", Napi::Function::New(env, IfName));
  exports.Set("ifIndex", Napi::Function::New(env, IfIndex));
}

}  // namespace ferry
