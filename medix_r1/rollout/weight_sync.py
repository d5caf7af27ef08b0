"""The weight-sync protocol between a trainer and a rollout server (both sides).

The tensors never travel in HTTP bodies. The trainer (rank 0) hosts a ``TCPStore`` and both sides
form a standalone two-party group on it, which vLLM's own default group (world size 1) does not
see: ``gloo`` for CPU weights (a ``ProcessGroupGloo``; also works between GPU machines through host
memory) or ``nccl`` for CUDA ones (vLLM's ``PyNcclCommunicator`` over a ``StatelessProcessGroup``).
An update is a list of ``{name, dtype, shape}`` sent over HTTP, then one broadcast per bucket of
consecutive same-dtype tensors (:func:`plan_buckets`, computed identically on both sides). Before
the first broadcast the server writes a ready key into the store (:func:`ready_key`), so a trainer
never broadcasts into a request the server refused.
"""
from __future__ import annotations

import datetime
import logging
import math
import socket

import torch

log = logging.getLogger("medix_r1.rollout")

TRAINER_RANK = 0  # hosts the store and broadcasts the weights
TOKEN_ENV = "MEDIX_ROLLOUT_TOKEN"  # the rollout server's shared token: read from the environment only
SYNC_PREFIX = "medix_weight_sync"
BACKENDS = ("gloo", "nccl")
# dtypes a weight update may carry (names as str(torch.dtype) without the "torch.")
DTYPES = {name: getattr(torch, name) for name in
          ("float32", "float16", "bfloat16", "float64", "int64", "int32", "int16", "int8", "uint8", "bool")}


def dtype_name(dtype: torch.dtype) -> str:
    name = str(dtype).removeprefix("torch.")
    if name not in DTYPES:
        raise ValueError(f"weight sync does not carry dtype {dtype}; supported: {sorted(DTYPES)}")
    return name


def parse_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; supported: {sorted(DTYPES)}")
    return DTYPES[name]


def check_meta(meta: list[dict]) -> list[tuple[str, torch.dtype, tuple[int, ...]]]:
    """``[{name, dtype, shape}]`` -> ``[(name, torch dtype, shape)]``; ValueError naming a bad entry."""
    out = []
    for i, m in enumerate(meta):
        try:
            name, dtype, shape = str(m["name"]), parse_dtype(m["dtype"]), tuple(int(s) for s in m["shape"])
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"params[{i}] ({m!r}): {e}") from None
        if not name or any(s < 0 for s in shape):
            raise ValueError(f"params[{i}] ({m!r}): empty name or negative size")
        out.append((name, dtype, shape))
    return out


def plan_buckets(meta: list[tuple[str, torch.dtype, tuple[int, ...]]], bucket_bytes: int) -> list[list[int]]:
    """Groups of consecutive parameter indices that travel as one flat broadcast.

    ``bucket_bytes <= 0``: one tensor per broadcast. Otherwise consecutive tensors of one dtype
    are packed while they fit in ``bucket_bytes``; a larger tensor travels alone. Both sides
    compute the same plan from the same metadata."""
    if bucket_bytes <= 0:
        return [[i] for i in range(len(meta))]
    buckets, current, size, dtype = [], [], 0, None
    for i, (_, dt, shape) in enumerate(meta):
        nbytes = math.prod(shape) * torch.empty((), dtype=dt).element_size()
        if current and (dt != dtype or size + nbytes > bucket_bytes):
            buckets.append(current)
            current, size = [], 0
        current.append(i)
        size, dtype = size + nbytes, dt
    if current:
        buckets.append(current)
    return buckets


def local_address_towards(host: str, port: int = 9) -> str:
    """This machine's address on the route to ``host`` (no packet is sent: a UDP connect only picks
    the route). Loopback for a loopback peer."""
    if host in ("localhost", "127.0.0.1", "::1") or host.startswith("127."):
        return "127.0.0.1"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect((host, port))
            return s.getsockname()[0]
        except OSError:
            return socket.gethostbyname(socket.gethostname())


def ready_key(sync_id: str, rank: int) -> str:
    return f"medix/ready/{sync_id}/{rank}"


class WeightSyncGroup:
    """A standalone two-or-more-party group for broadcasting weights from the trainer (rank 0).

    Built in two steps because rank 0 must host the store before it tells the other side where
    it is: :meth:`open_store` (does not block), then :meth:`connect` (blocks until every rank
    joined). ``store`` doubles as the side channel for ready keys."""

    def __init__(self, backend: str, rank: int, world_size: int, timeout_s: float, store, spg=None):
        if backend not in BACKENDS:
            raise ValueError(f"weight-sync backend must be one of {BACKENDS}, got {backend!r}")
        self.backend, self.rank, self.world_size = backend, rank, world_size
        self.timeout = datetime.timedelta(seconds=timeout_s)
        self.store, self.spg = store, spg
        self.pg = self.comm = None
        self.device = torch.device("cpu")  # where broadcast tensors live (the CUDA device with nccl)
        self.port: int | None = None

    @classmethod
    def open_store(cls, backend: str, host: str, port: int, rank: int, world_size: int,
                   timeout_s: float) -> WeightSyncGroup:
        """Rank 0 hosts the store (``port`` 0: a free one, see :attr:`port`); others connect to it."""
        if not 0 <= rank < world_size or world_size < 2:
            raise ValueError(f"rank {rank} / world size {world_size}: need world_size >= 2 and 0 <= rank < world_size")
        td = datetime.timedelta(seconds=timeout_s)
        if backend == "gloo":
            from torch.distributed import TCPStore
            store = TCPStore(host, port, world_size, is_master=rank == TRAINER_RANK, timeout=td,
                             wait_for_workers=False)
            group = cls(backend, rank, world_size, timeout_s, store)
            group.port = store.port
            return group
        from vllm.distributed.utils import StatelessProcessGroup
        sock = None
        if rank == TRAINER_RANK:  # bind first so that port 0 becomes a known port
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen()
            port = sock.getsockname()[1]
        spg = StatelessProcessGroup.create(host, port, rank, world_size, store_timeout=int(timeout_s),
                                           listen_socket=sock)
        group = cls(backend, rank, world_size, timeout_s, spg.store, spg)
        group.port = port
        return group

    def connect(self, local_host: str, device=None) -> WeightSyncGroup:
        """Form the group (blocks until all ranks call it). ``local_host``: this side's address the
        others reach it at (gloo); ``device``: the CUDA device (nccl)."""
        if self.backend == "gloo":
            import torch.distributed as dist
            opts = dist.ProcessGroupGloo._Options()
            opts._timeout = self.timeout
            opts._devices = [dist.ProcessGroupGloo.create_device(hostname=local_host)]
            self.pg = dist.ProcessGroupGloo(dist.PrefixStore(SYNC_PREFIX, self.store), self.rank, self.world_size, opts)
        else:
            from vllm.distributed.device_communicators.pynccl import PyNcclCommunicator
            self.device = torch.device(device if device is not None else f"cuda:{torch.cuda.current_device()}")
            self.comm = PyNcclCommunicator(self.spg, device=self.device)
            if self.comm.disabled:  # vLLM disables it silently without an NCCL library: broadcasts would be no-ops
                raise RuntimeError("vLLM's PyNcclCommunicator is disabled (no NCCL library?): use the gloo backend")
        return self

    def broadcast(self, tensor: torch.Tensor, src: int = TRAINER_RANK) -> None:
        if self.backend == "gloo":
            import torch.distributed as dist
            opts = dist.BroadcastOptions()
            opts.rootRank, opts.rootTensor, opts.timeout = src, 0, self.timeout
            self.pg.broadcast([tensor], opts).wait()
        else:
            self.comm.broadcast(tensor, src=src, stream=torch.cuda.current_stream(self.device))

    def synchronize(self) -> None:
        if self.backend == "nccl":
            torch.cuda.current_stream(self.device).synchronize()

    def close(self) -> None:
        pg, self.pg, self.comm, self.spg = self.pg, None, None, None
        if pg is not None:
            try:
                pg.shutdown()
            except Exception as e:  # a peer that is gone already
                log.debug("weight-sync group shutdown: %s", e)
        self.store = None


def send_weights(group: WeightSyncGroup, tensors, meta, bucket_bytes: int) -> int:
    """Rank 0: broadcast ``tensors`` (an iterable in ``meta`` order, each already of the meta's
    dtype and shape) bucket by bucket; at most one bucket (or one tensor) is held at a time.
    Returns the bytes sent."""
    it, sent = iter(tensors), 0
    for bucket in plan_buckets(meta, bucket_bytes):
        parts = [next(it) for _ in bucket]
        for t, i in zip(parts, bucket):
            if tuple(t.shape) != meta[i][2] or t.dtype != meta[i][1]:
                raise ValueError(f"{meta[i][0]}: tensor is {t.dtype} {tuple(t.shape)}, metadata says "
                                 f"{meta[i][1]} {meta[i][2]}")
        flat = parts[0].contiguous() if len(parts) == 1 else torch.cat([p.reshape(-1) for p in parts])
        group.broadcast(flat.to(group.device))
        sent += flat.numel() * flat.element_size()
    group.synchronize()
    return sent


def receive_weights(group: WeightSyncGroup, meta, bucket_bytes: int):
    """Rank > 0: yield ``(name, tensor)`` as each bucket arrives (the mirror of :func:`send_weights`)."""
    for bucket in plan_buckets(meta, bucket_bytes):
        if len(bucket) == 1:
            name, dtype, shape = meta[bucket[0]]
            t = torch.empty(shape, dtype=dtype, device=group.device)
            group.broadcast(t)
            group.synchronize()
            yield name, t
            continue
        sizes = [math.prod(meta[i][2]) for i in bucket]
        flat = torch.empty(sum(sizes), dtype=meta[bucket[0]][1], device=group.device)
        group.broadcast(flat)
        group.synchronize()
        for i, part in zip(bucket, flat.split(sizes)):
            yield meta[i][0], part.view(meta[i][2])


def named_weights(model: torch.nn.Module):
    """(checkpoint name, parameter) pairs: wrapper prefixes that torch.compile / activation
    checkpointing / FSDP1 add to names are dropped, so vLLM sees the Hugging Face names."""
    for name, p in model.named_parameters():
        for wrapper in ("_orig_mod.", "_checkpoint_wrapped_module.", "_fsdp_wrapped_module."):
            name = name.replace(wrapper, "")
        yield name, p


def full_tensor(p: torch.Tensor) -> torch.Tensor:
    """The whole parameter: an FSDP2 (DTensor) shard is gathered (a collective: every trainer
    rank must call this for the same parameter in the same order)."""
    p = p.detach()
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # torch built without distributed
        return p
    return p.full_tensor() if isinstance(p, DTensor) else p
