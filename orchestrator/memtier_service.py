"""The memory tier, node side: the node agent's shared-memory directory and its ring replication.

Backend-neutral: it lives in the warm per-node agent that forks the ranks (the local launcher's, and
the same agent srun starts on Slurm's in-allocation path), through three calls: :func:`start`,
``before_launch(spec)``, ``close()``; each launcher plans the ring with :func:`plan_launch`. The directory is created empty when the agent starts (a restarted node has lost its
memory) and removed when it exits.

Replication: each agent pushes to its ring partner (the next node of the attempt), over TCP, the newest
step that all of its ranks have a copy of, the same step for every one of them (a lost node's ranks then
share a step at the partner), and, before forking ranks that ran elsewhere in the previous attempt (a spare
taking a lost node's place), fetches their copies from their old node and that node's partner. Every
frame is authenticated with the run key (HMAC-SHA256, ``trainer.telemetry_auth``) and carries its
send time (frames older than :data:`MAX_AGE_S` are refused); a copy lands under a dot-name and is
renamed only after its MAC verified.

Lag-aware retention: a push that is acknowledged is the node's replicated step. Every push frame and
its acknowledgement carry what the sender knows of each ring node's replicated step (its own clock's
time with each, so a newer report wins; gossip around the ring). The smallest over the ring is the
watermark: every copy from it on is kept (``trainer.memstore.prune``, at most MAX_KEEP per rank), so
whichever node is lost, the step its partner holds is one every other rank still has, however far the
partner's replicas lagged (up to MAX_KEEP - 1 steps; beyond, storage). Each attempt starts the
gossip afresh; until every ring node has reported, copies are kept up to MAX_KEEP.

Test hook: ``ORCH_MEM_TEST_PUSH_EVERY=node:K`` makes ``node`` replicate only steps that are multiples of
K (its partner's replicas lag up to K - 1 steps, deterministically).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import socket
import struct
import threading
import time
from pathlib import Path
from typing import Any, Callable

from trainer import memstore
from trainer.telemetry_auth import key_from_env

DOMAIN = b"orchmem-repl1"
MAX_AGE_S = 120.0
CHUNK = 1 << 20
PUSH_POLL_S = 0.02
FETCH_IDLE_S = 5.0  # a serving agent answers in milliseconds: a source silent this long is frozen or gone
FETCH_SLICE_S = 0.1  # the fetching agent waits in slices this long and heartbeats between them
ENV_TEST_PUSH_EVERY = "ORCH_MEM_TEST_PUSH_EVERY"


def _push_every(node: str) -> int:
    """The test hook's stride for ``node`` (1: every step may be replicated)."""
    name, _, k = os.environ.get(ENV_TEST_PUSH_EVERY, "").partition(":")
    return max(1, int(k)) if name == node and k.isdigit() else 1


def _mac(key: bytes, head: bytes) -> Any:
    m = hmac.new(key, DOMAIN, hashlib.sha256)
    m.update(struct.pack(">I", len(head)) + head)
    return m


def send_frame(sock: socket.socket, key: bytes, hdr: dict[str, Any], body: Path | bytes = b"") -> None:
    """``u32 len | header JSON | body | HMAC(header)``; a file body goes by sendfile (no copy here)."""
    if isinstance(body, Path):
        with open(body, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = json.dumps({**hdr, "size": size, "t": time.time()}).encode()
            sock.sendall(struct.pack(">I", len(head)) + head)
            if size:
                sock.sendfile(f, 0, size)
    else:
        head = json.dumps({**hdr, "size": len(body), "t": time.time()}).encode()
        sock.sendall(struct.pack(">I", len(head)) + head + body)
    sock.sendall(_mac(key, head).digest())


Recv = Callable[[int], bytes]


class PatientReader:
    """``recv`` for a fetch: waits in short slices, calling ``tick`` between them (the agent sends its
    heartbeat, so a slow or frozen source does not make the fetching node look lost too), and gives up
    once the source has been silent for ``idle_s``."""

    def __init__(self, sock: socket.socket, tick: Callable[[], None], idle_s: float = FETCH_IDLE_S,
                 slice_s: float = FETCH_SLICE_S) -> None:
        self.sock, self.tick, self.idle_s, self.slice_s = sock, tick, idle_s, slice_s
        sock.settimeout(slice_s)

    def __call__(self, n: int) -> bytes:
        quiet = 0.0
        while True:
            self.tick()
            try:
                return self.sock.recv(n)
            except socket.timeout:
                quiet += self.slice_s
                if quiet >= self.idle_s:
                    raise TimeoutError(f"source silent for {quiet:.1f}s") from None


def connect_patiently(addr: tuple[str, int], tick: Callable[[], None], idle_s: float = FETCH_IDLE_S,
                      slice_s: float = FETCH_SLICE_S) -> socket.socket:
    """A connection to ``addr`` tried in short attempts with ``tick`` between them, for ``idle_s``."""
    deadline = time.monotonic() + idle_s
    while True:
        tick()
        try:
            return socket.create_connection(addr, timeout=slice_s)
        except (socket.timeout, TimeoutError):
            if time.monotonic() >= deadline:
                raise TimeoutError(f"no connection to {addr} in {idle_s:.1f}s") from None


def _recv_exact(sock: socket.socket, n: int, recv: Recv | None = None) -> bytes:
    recv = recv or sock.recv
    buf = bytearray()
    while len(buf) < n:
        chunk = recv(min(CHUNK, n - len(buf)))
        if not chunk:
            raise ConnectionError("peer closed mid-frame")
        buf += chunk
    return bytes(buf)


def recv_frame(sock: socket.socket, key: bytes, sink: Path | None = None,
               recv: Recv | None = None) -> tuple[dict[str, Any], bytes]:
    """Read one frame; a body goes to ``sink`` (renamed into place by the caller) or memory. Raises
    PermissionError on a bad MAC or an old frame (and removes what was written). ``recv``: how to read
    (a :class:`PatientReader`), else the socket's own ``recv`` under its timeout."""
    recv = recv or sock.recv
    (n,) = struct.unpack(">I", _recv_exact(sock, 4, recv))
    if n > 1 << 16:
        raise PermissionError("header too long")
    head = _recv_exact(sock, n, recv)
    hdr = json.loads(head)
    m, left, body = _mac(key, head), int(hdr["size"]), b""
    out = open(sink, "wb") if sink is not None else None
    try:
        while left:
            chunk = recv(min(CHUNK, left))
            if not chunk:
                raise ConnectionError("peer closed mid-frame")
            left -= len(chunk)
            if out is not None:
                out.write(chunk)
            else:
                body += chunk
    finally:
        if out is not None:
            out.close()
    ok = hmac.compare_digest(_recv_exact(sock, 32, recv), m.digest()) and abs(time.time() - float(hdr["t"])) < MAX_AGE_S
    if not ok:
        if sink is not None:
            sink.unlink(missing_ok=True)
        raise PermissionError("bad MAC or stale frame: not from this run")
    return hdr, body


class NodeMemory:
    """One node's memory tier: the directory, the replication server and the pusher."""

    def __init__(self, node: str, run_dir: Path, port: int | None, key: bytes | None,
                 host: str = "0.0.0.0") -> None:
        self.node, self.run_dir, self.key = node, run_dir, key
        self.base = memstore.node_dir(run_dir, node)
        memstore.wipe(self.base)  # a (re)started node has empty memory
        self.base.mkdir(parents=True, exist_ok=True)
        _claim(self.base)
        for name in reclaim_dead_agents(self.base.parent):
            self.log(f"reclaimed the memory a dead agent of this run left behind ({name})")
        os.environ[memstore.ENV_DIR] = str(self.base)  # forked ranks inherit it
        self.partner: tuple[str, int] | None = None
        self._sent: dict[int, tuple[str, int]] = {}  # rank → (copy name, mtime) last pushed
        self.ranks: list[int] = []  # this attempt's ranks on this node (only theirs are pushed)
        self.attempt = -1
        self.ring: list[str] = []  # this attempt's ring (node names): the watermark needs each one's report
        self.acked: dict[str, tuple[int, float]] = {}  # node → (replicated step, when, by that node's clock)
        self.retain_from: int | None = None  # the watermark written for the ranks (memstore.RETAIN)
        self._acks = threading.Lock()
        self._view_news = False  # the view changed since a frame last carried it to the partner
        self.push_every = _push_every(node)
        self._stop = threading.Event()
        self.busy = threading.Lock()  # held by the pusher and handlers; the agent takes it to fork safely
        self._last_push_error = ""
        self._pushing: socket.socket | None = None  # the push in flight (cut when the partner changes)
        self.server: socket.socket | None = None
        self.port: int | None = None  # where the replication server listens (0 asked: the kernel chose)
        if port is not None and key:
            self.server = socket.create_server((host, port), reuse_port=False)
            self.port = int(self.server.getsockname()[1])
            threading.Thread(target=self._serve, daemon=True, name="memtier-server").start()
            threading.Thread(target=self._push_loop, daemon=True, name="memtier-pusher").start()

    def log(self, msg: str) -> None:
        os.write(2, f"memtier {self.node}: {msg}\n".encode())  # no stdio lock a forked rank could inherit held

    # ---- serving ---------------------------------------------------------------------------------
    def _serve(self) -> None:
        assert self.server is not None
        while not self._stop.is_set():
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        assert self.key is not None
        with conn:
            conn.settimeout(60)
            try:
                self._dispatch(conn)
            except (OSError, ValueError, KeyError, PermissionError, ConnectionError) as exc:
                self.log(f"refused a replication request: {exc}")

    def _dispatch(self, conn: socket.socket) -> None:
        assert self.key is not None
        tmp = self.base / f".incoming-{threading.get_ident()}.tmp"
        hdr, _ = recv_frame(conn, self.key, tmp)
        if hdr["op"] == "put":
            dest = self.base / "replica" / _safe(hdr["src"]) / f"rank{int(hdr['rank'])}"
            dest.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, dest / memstore.copy_name(int(hdr["step"])))
            self.learn(hdr.get("attempt"), hdr.get("acked") or {})
            memstore.prune(dest, self.retain_from)
            send_frame(conn, self.key, {"op": "ok", "attempt": self.attempt, "acked": self.acked_view()})
        elif hdr["op"] == "acks":  # a view of the ring's replicated steps alone (nothing new to push)
            tmp.unlink(missing_ok=True)
            self.learn(hdr.get("attempt"), hdr.get("acked") or {})
            send_frame(conn, self.key, {"op": "ok", "attempt": self.attempt, "acked": self.acked_view()})
        elif hdr["op"] == "get":
            tmp.unlink(missing_ok=True)
            for rank in hdr["ranks"]:
                for path, written in self._copies_of(int(rank)):
                    send_frame(conn, self.key, {"op": "file", "rank": int(rank), "name": path.name,
                                                "written_ns": written}, path)
            send_frame(conn, self.key, {"op": "end"})

    def _copies_of(self, rank: int) -> list[tuple[Path, int]]:
        """Every copy this node holds of ``rank`` (its own: the rank ran here, and replicas from each node
        it ran on), with when each was written. The receiver keeps the most recently written ones, so
        the write times travel with them: replicas from a node the rank left long ago must not win."""
        dirs = [memstore.rank_dir(self.base, rank)]
        dirs += [d / f"rank{rank}" for d in (self.base / "replica").glob("*")]
        out = []
        for p in (p for d in dirs for p in memstore.list_copies(d)):
            try:
                out.append((p, p.stat().st_mtime_ns))
            except OSError:  # pruned meanwhile
                continue
        return sorted(out, key=lambda pw: pw[1])

    # ---- pushing to the ring partner -------------------------------------------------------------
    def _push_loop(self) -> None:
        while not self._stop.wait(PUSH_POLL_S):
            partner = self.partner
            if partner is None:
                continue
            with self.busy:
                self._push_common(partner)
                if self._view_news:
                    self._send_view(partner)

    def _newest_common(self) -> int | None:
        """The most recently written step that every rank here has a copy of (and the hook allows)."""
        written: dict[int, int] = {}  # step → the oldest write time among the ranks
        for i, rank in enumerate(self.ranks):
            mine: dict[int, int] = {}
            for p in memstore.list_copies(memstore.rank_dir(self.base, rank)):
                try:
                    mine[memstore.step_of(p)] = p.stat().st_mtime_ns
                except (OSError, ValueError):
                    continue
            written = mine if i == 0 else {s: min(t, mine[s]) for s, t in written.items() if s in mine}
        steps = [s for s in written if s % self.push_every == 0]
        return max(steps, key=lambda s: written[s]) if steps else None

    def _push_common(self, partner: tuple[str, int]) -> None:
        """Push one step for all ranks here (each copy once); once all are acknowledged it is this node's
        replicated step."""
        step = self._newest_common()
        if step is None:
            return
        for rank in self.ranks:
            if self.partner != partner or not self._push_one(partner, rank, step):
                return
        with self._acks:
            if self.acked.get(self.node, (None,))[0] != step:
                self.acked[self.node] = (step, time.time())
                self._view_news = True
                self._update_retain()

    def _send_view(self, partner: tuple[str, int]) -> None:
        """Pass on a newer view of the ring when no copy carried it (the run paused, or ended)."""
        self._view_news = False
        try:
            with socket.create_connection(partner, timeout=30) as s:
                self._pushing = s
                if self.partner != partner:
                    return
                send_frame(s, self.key, {"op": "acks", "attempt": self.attempt, "acked": self.acked_view()})
                reply, _ = recv_frame(s, self.key)
            self.learn(reply.get("attempt"), reply.get("acked") or {})
        except (OSError, ValueError, PermissionError, ConnectionError):
            self._view_news = True  # the next poll tries again (a failing partner is logged by pushes)
        finally:
            self._pushing = None

    def _push_one(self, partner: tuple[str, int], rank: int, step: int) -> bool:
        path = memstore.rank_dir(self.base, rank) / memstore.copy_name(step)
        try:
            mark = (path.name, path.stat().st_mtime_ns)
            if self._sent.get(rank) == mark:
                return True
            with socket.create_connection(partner, timeout=30) as s:
                self._pushing = s
                if self.partner != partner:  # moved on meanwhile (before_launch sets it, then cuts)
                    return False
                self._view_news = False  # this frame carries the view
                send_frame(s, self.key, {"op": "put", "src": self.node, "rank": rank, "step": step,
                                         "attempt": self.attempt, "acked": self.acked_view()}, path)
                reply, _ = recv_frame(s, self.key)
            self._sent[rank] = mark
            self.learn(reply.get("attempt"), reply.get("acked") or {})
            return True
        except (OSError, ValueError, PermissionError, ConnectionError) as exc:
            if str(exc) != self._last_push_error:  # once per kind of failure, not every poll
                self.log(f"push of rank {rank} to {partner} failed: {exc}")
            self._last_push_error = str(exc)
            return False
        finally:
            self._pushing = None

    # ---- lag-aware retention -------------------------------------------------------------------------
    def acked_view(self) -> dict[str, tuple[int, float]]:
        with self._acks:
            return dict(self.acked)

    def learn(self, attempt: Any, acked: dict[str, Any]) -> None:
        """Merge another node's view of the ring's replicated steps (this attempt's only; newer wins)."""
        if attempt != self.attempt:
            return
        with self._acks:
            for node, seen in acked.items():
                try:
                    step, t = int(seen[0]), float(seen[1])
                except (TypeError, ValueError, IndexError):
                    continue
                if node in self.ring and node != self.node and t > self.acked.get(node, (0, 0.0))[1]:
                    self.acked[node] = (step, t)
                    self._view_news = True
            self._update_retain()

    def _update_retain(self) -> None:
        """The watermark: the oldest step some ring node's partner may be the only other holder of."""
        if not self.ring:
            new = None
        elif all(n in self.acked for n in self.ring):
            new = min(self.acked[n][0] for n in self.ring)
        else:
            new = memstore.UNKNOWN
        if new != self.retain_from:
            self.retain_from = new
            memstore.write_retain(self.base, new)

    def _cut_push_to_old_partner(self) -> None:
        """A partner that stopped answering (a frozen node: Slurm's slurmd killed, its tasks stopped) would
        hold the pusher, and with it ``busy`` and the next fork, until the socket timeout. Called after
        ``partner`` changed; the pusher publishes its socket before checking ``partner``, so one of the
        two always sees the other."""
        sock = self._pushing
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    # ---- the agent's hooks ---------------------------------------------------------------------------
    def before_launch(self, spec: dict[str, Any], tick: Callable[[], None] = lambda: None) -> None:
        """Set the ring partner, and fetch copies of ranks that ran on another node last attempt
        (``tick``: the agent's heartbeat, kept going while a fetch waits)."""
        mem = spec.get("mem") or {}
        partner = tuple(mem["partner"]) if mem.get("partner") else None
        if partner != self.partner:
            self.partner = partner  # type: ignore[assignment]
            self._cut_push_to_old_partner()
        self._sent.clear()
        self.ranks = [int(r) for r in spec.get("ranks", [])]
        with self._acks:  # a new attempt: its ring reports afresh (nothing of the old trajectory's steps)
            self.attempt, self.acked = int(spec.get("attempt", 0)), {}
            self.ring = [str(n) for n in mem.get("ring", [])] if partner is not None else []
            self._update_retain()
        for rank, sources in (mem.get("sources") or {}).items():
            for src in sources:
                if self.fetch(int(rank), (str(src[0]), int(src[1])), tick):
                    break

    def fetch(self, rank: int, source: tuple[str, int], tick: Callable[[], None] = lambda: None,
              idle_s: float = FETCH_IDLE_S) -> bool:
        """Copy every copy ``source`` holds of ``rank`` into this node's rank directory. A source that
        stops answering (a frozen node not yet declared lost) is given up after ``idle_s`` of silence,
        with ``tick`` called meanwhile: the caller's next source, or storage, takes over."""
        if self.key is None:
            return False
        dest = memstore.rank_dir(self.base, rank)
        dest.mkdir(parents=True, exist_ok=True)
        got, t0, whole = 0, time.perf_counter(), False
        tmp = dest / f".fetch-{os.getpid()}.tmp"
        try:
            with connect_patiently(source, tick, idle_s) as s:
                recv = PatientReader(s, tick, idle_s)
                send_frame(s, self.key, {"op": "get", "ranks": [rank]})
                while True:
                    hdr, _ = recv_frame(s, self.key, tmp, recv)
                    if hdr["op"] == "end":
                        tmp.unlink(missing_ok=True)
                        break
                    if isinstance(hdr.get("written_ns"), int):  # prune keeps the most recently written
                        os.utime(tmp, ns=(hdr["written_ns"], hdr["written_ns"]))
                    os.replace(tmp, dest / _safe(hdr["name"]))
                    got += 1
            whole = True
        except (OSError, ValueError, PermissionError, ConnectionError) as exc:
            tmp.unlink(missing_ok=True)  # a half-received copy is /dev/shm (RAM) nobody would free
            self.log(f"fetch of rank {rank} from {source} failed after {got} copies: {exc}")
        memstore.prune(dest, self.retain_from)
        self.log(f"fetched {got} copies of rank {rank} from {source} in {time.perf_counter() - t0:.3f}s")
        # copies are served oldest first: a source cut off mid-way may have sent only old ones, so the
        # caller asks the next source too (what came is kept; prune keeps the newest)
        return got > 0 and whole

    def close(self) -> None:
        self._stop.set()
        if self.server is not None:
            self.server.close()
        memstore.wipe(self.base)
        try:
            self.base.parent.rmdir()  # the run's directory, once the last node of this host left
        except OSError:
            pass


OWNER = "agent.json"  # in a node's directory: which process owns it (so a dead owner's copies can go)


def _whoami() -> dict[str, Any]:
    """This process as another agent on this host can check it: pid, pid namespace and host."""
    try:
        pidns = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        pidns = 0
    return {"pid": os.getpid(), "pidns": pidns, "host": socket.gethostname()}


def _claim(base: Path) -> None:
    (base / OWNER).write_text(json.dumps(_whoami()))


def reclaim_dead_agents(run_base: Path) -> list[str]:
    """Remove the node directories of this run whose agent died without cleaning up (SIGKILLed, or its
    host's memory lost only in the simulation): nobody serves or loads them, and /dev/shm is RAM. Only
    owners provably dead are reclaimed: same host and pid namespace, and no such process (a frozen
    agent, a reused pid or an owner we cannot judge keeps its directory)."""
    me, gone = _whoami(), []
    for d in sorted(run_base.iterdir()) if run_base.is_dir() else []:
        try:
            owner = json.loads((d / OWNER).read_text())
        except (OSError, ValueError):
            continue
        if owner.get("host") != me["host"] or owner.get("pidns") != me["pidns"] or not me["pidns"]:
            continue
        try:
            os.kill(int(owner["pid"]), 0)
            continue  # alive (or a reused pid: kept)
        except ProcessLookupError:
            memstore.wipe(d)
            gone.append(d.name)
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return gone


def _safe(name: str) -> str:
    """A file or node name from the network never escapes its directory."""
    base = os.path.basename(str(name))
    if not base or base.startswith(".") or base != str(name):
        raise ValueError(f"bad name {name!r}")
    return base


def start(node: str, run_dir: Path, host: str | None = None) -> NodeMemory:
    """The agent's memory tier; replication only with the run key and a port (``ORCH_MEM_PORT``, chosen
    by the local launcher) or a ``host`` to listen on (Slurm: the address the agent reaches the
    supervisor from, any free port; the agent reports it in its ``ready`` message)."""
    port = int(os.environ.get(memstore.ENV_PORT) or 0) or (0 if host else None)
    return NodeMemory(node, Path(run_dir), port, key_from_env({"ORCH_RUN_DIR": str(run_dir)}), host or "0.0.0.0")


def plan_launch(nodes: list[str], ranks_per_node: int, prev_owner: dict[int, str],
                prev_partner: dict[str, str], addr: dict[str, tuple[str, int] | None],
                replicate: bool = True) -> tuple[dict[str, dict[str, Any]], dict[int, str], dict[str, str]]:
    """Each node's ``mem`` spec (ring partner, where to fetch moved ranks' copies from), and the new
    rank → node and node → partner maps for the next launch."""
    n = len(nodes)
    partner = {node: nodes[(i + 1) % n] for i, node in enumerate(nodes)} if replicate and n > 1 else {}
    out: dict[str, dict[str, Any]] = {}
    owner: dict[int, str] = {}
    for i, node in enumerate(nodes):
        sources: dict[str, list[tuple[str, int]]] = {}
        for rank in range(i * ranks_per_node, (i + 1) * ranks_per_node):
            owner[rank] = node
            old = prev_owner.get(rank)
            if old is None or old == node:
                continue
            cands = [old, prev_partner.get(old)]
            sources[str(rank)] = [a for c in cands if c and c != node and (a := addr.get(c)) is not None]
        p = partner.get(node)
        out[node] = {"partner": addr.get(p) if p else None, "sources": sources, "ring": list(nodes) if p else []}
    return out, owner, partner
