"""`dist-ae launch --workers N -- <train arguments>`: a multi-worker cluster on this machine. Starts N workers on
127.0.0.1 with free ports and their TF_CONFIG, prefixes each worker's output with its index, and when one worker fails
stops the others and exits non-zero, naming it. How multi-worker training is tried on one machine, and tested here.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time

from dist_ae.errors import UsageError

GRACE_SECONDS = 10


def ephemeral_range() -> tuple[int, int]:
    """The ports the kernel hands out for outgoing connections (and for bind to port 0)."""
    try:
        low, high = open("/proc/sys/net/ipv4/ip_local_port_range").read().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def free_ports(count: int) -> list[int]:
    """Free ports on 127.0.0.1 below the ephemeral range: a port the kernel may hand to some outgoing connection
    (another worker's, say) in the moment between our check and the worker's bind would make that worker fail."""
    low, _ = ephemeral_range()
    candidates = list(range(max(1024, low - 12000), low))
    random.shuffle(candidates)
    ports = []
    for port in candidates:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as handle:
            try:
                handle.bind(("127.0.0.1", port))
            except OSError:
                continue
        ports.append(port)
        if len(ports) == count:
            return ports
    raise UsageError(f"--workers {count}: found only {len(ports)} free ports on 127.0.0.1")


def tf_config(addresses: list[str], index: int) -> str:
    return json.dumps({"cluster": {"worker": addresses}, "task": {"type": "worker", "index": index}})


def train_command(train_args: list[str]) -> list[str]:
    args = list(train_args)
    if args[:1] == ["--"]:
        args = args[1:]
    if args[:1] == ["train"]:
        args = args[1:]
    for index, arg in enumerate(args):
        value = arg.split("=", 1)[1] if arg.startswith("--strategy=") else None
        if arg == "--strategy" and index + 1 < len(args):
            value = args[index + 1]
        if value is not None and value != "multiworker":
            raise UsageError(f"--strategy {value}: `dist-ae launch` starts multiworker workers; drop --strategy")
    return [sys.executable, "-m", "dist_ae", "train", "--strategy", "multiworker", *args]


def relay(stream, prefix: str, sink) -> None:
    """Copies a worker's output line by line, each line under its worker's prefix."""
    for line in iter(stream.readline, ""):
        line = line.replace("\r", "\n").rstrip("\n")
        for part in line.split("\n"):
            if part:
                sink.write(f"{prefix}{part}\n")
                sink.flush()
    stream.close()


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


def stop(processes: list[subprocess.Popen]) -> None:
    """SIGTERM to every worker still running, then SIGKILL to any that outlive the grace period."""
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + GRACE_SECONDS
    for process in processes:
        try:
            process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def launch(workers: int, train_args: list[str]) -> int:
    """Runs the workers to the end; returns 0 when all succeed, else the first failing worker's status (or 1)."""
    if workers < 1:
        raise UsageError(f"--workers {workers}: must be at least 1")
    command = train_command(train_args)
    addresses = [f"127.0.0.1:{port}" for port in free_ports(workers)]
    processes, relays = [], []
    for index in range(workers):
        env = dict(os.environ, TF_CONFIG=tf_config(addresses, index), PYTHONUNBUFFERED="1")
        process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                   bufsize=1)
        processes.append(process)
        print(f"dist-ae launch: worker {index} at {addresses[index]} (pid {process.pid})", flush=True)
        for stream, sink in ((process.stdout, sys.stdout), (process.stderr, sys.stderr)):
            thread = threading.Thread(target=relay, args=(stream, f"[worker {index}] ", sink), daemon=True)
            thread.start()
            relays.append(thread)

    def forward(signum, frame):  # Ctrl-C or a scheduler's SIGTERM reaches every worker
        for process in processes:
            if process.poll() is None:
                process.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        status = 0
        while True:
            codes = [process.poll() for process in processes]
            failed = [index for index, code in enumerate(codes) if code not in (None, 0)]
            if failed:
                # Of workers found dead together, one killed by a signal is the cause; the others lost it.
                first = min(failed, key=lambda index: (codes[index] >= 0, index))
                print(f"dist-ae launch: worker {first} {describe_exit(codes[first])}; stopping the other workers",
                      file=sys.stderr, flush=True)
                stop(processes)
                status = codes[first] if codes[first] > 0 else 1
                break
            if all(code == 0 for code in codes):
                break
            time.sleep(0.2)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    for thread in relays:
        thread.join(timeout=5)
    return status
