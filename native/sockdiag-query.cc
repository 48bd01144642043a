// SockDiagQuery (sockdiag.h): the netlink transport of sock_diag(7), 64 KiB reads.
#include "sockdiag.h"

#include <errno.h>
#include <linux/netlink.h>
#include <linux/sock_diag.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <vector>

namespace ferry {

int SockDiagQuery(uint16_t type, const void* req, size_t len, uint16_t flags,
                  const std::function<void(const void* payload, size_t len)>& each) {
  int nl = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_SOCK_DIAG);
  if (nl < 0) return errno;
  std::vector<char> msg(NLMSG_LENGTH(len));
  nlmsghdr* h = reinterpret_cast<nlmsghdr*>(msg.data());
  h->nlmsg_len = static_cast<uint32_t>(msg.size());
  h->nlmsg_type = type;
  h->nlmsg_flags = static_cast<uint16_t>(NLM_F_REQUEST | flags);
  h->nlmsg_seq = 1;
  memcpy(NLMSG_DATA(h), req, len);
  sockaddr_nl kernel;
  memset(&kernel, 0, sizeof kernel);
  kernel.nl_family = AF_NETLINK;
  if (sendto(nl, msg.data(), msg.size(), 0, reinterpret_cast<sockaddr*>(&kernel), sizeof kernel) < 0) {
    int e = errno;
    close(nl);
    return e;
  }
  const bool dump = (flags & NLM_F_DUMP) == NLM_F_DUMP;
  std::vector<char> buf(64 * 1024);
  int result = 0;
  for (bool done = false; !done;) {
    ssize_t r = recv(nl, buf.data(), buf.size(), 0);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) {
      result = r < 0 ? errno : (dump ? EIO : 0);
      break;
    }
    for (nlmsghdr* m = reinterpret_cast<nlmsghdr*>(buf.data()); NLMSG_OK(m, static_cast<size_t>(r));
         m = NLMSG_NEXT(m, r)) {
      if (m->nlmsg_type == NLMSG_DONE) { done = true; break; }
      if (m->nlmsg_type == NLMSG_ERROR) {
        const nlmsgerr* err = reinterpret_cast<const nlmsgerr*>(NLMSG_DATA(m));
        result = err->error < 0 ? -err->error : err->error;  // 0: the acknowledgement
        done = true;
        break;
      }
      if (m->nlmsg_type != SOCK_DIAG_BY_FAMILY) continue;
      each(NLMSG_DATA(m), m->nlmsg_len - NLMSG_HDRLEN);
      if (!dump) { done = true; break; }
    }
  }
  close(nl);
  return result;
}

}  // namespace ferry
