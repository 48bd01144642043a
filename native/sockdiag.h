// One NETLINK_SOCK_DIAG round trip (sock_diag(7)), shared by unix.cc, inet.cc and
// sockdiag.cc: they build their family's request struct and read their family's answers.
#pragma once

#include <stddef.h>
#include <stdint.h>

#include <functional>

namespace ferry {

// Sends the request struct `req` (`len` bytes, the family's *_req) as one message of type
// `type` (SOCK_DIAG_BY_FAMILY or SOCK_DESTROY) with `flags` (NLM_F_REQUEST is added;
// NLM_F_DUMP for a dump, NLM_F_ACK to be told of success), and hands the payload of each
// SOCK_DIAG_BY_FAMILY answer (its nlmsghdr stripped) to `each`. A dump ends at NLMSG_DONE;
// anything else at its first answer or acknowledgement. Returns 0, or an errno: the
// socket's, or the kernel's from NLMSG_ERROR (ENOENT: no such socket).
int SockDiagQuery(uint16_t type, const void* req, size_t len, uint16_t flags,
                  const std::function<void(const void* payload, size_t len)>& each);

}  // namespace ferry
