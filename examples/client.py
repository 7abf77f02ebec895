"""Print the tracks of a running pipeline with only pyzmq, msgpack and numpy (no project code).

    python -m pipeline run configs/live.yaml --publish tcp://127.0.0.1:5555 &
    python examples/client.py tcp://127.0.0.1:5555 --count 50

Message layout (docs/wire-format.md): [topic, msgpack header, raw buffer ...].
"""

import argparse
import sys

import msgpack
import numpy as np
import zmq

DTYPES = {"|u1", "<u2", "<i2", "<i4", "<f4", "<f8"}  # the wire's allow-list: never pickle


def decode(frames):
    """Frames -> (header map, {array name: read-only ndarray})."""
    header = msgpack.unpackb(frames[1], raw=False)
    if header["version"] != 3:
        raise ValueError(f"{header['schema']} version {header['version']}; this client reads 3")
    arrays = {}
    for desc, buf in zip(header["buffers"], frames[2:], strict=True):
        if desc["dtype"] not in DTYPES:
            raise ValueError(f"dtype {desc['dtype']} is not on the wire's allow-list")
        arrays[desc["name"]] = np.frombuffer(buf, dtype=desc["dtype"]).reshape(desc["shape"])
    return header, arrays


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("endpoint", help="the pipeline's run.publish.endpoint")
    parser.add_argument("--count", type=int, help="exit after N tracks messages")
    parser.add_argument("--timeout", type=float, default=30.0, help="give up after S s idle")
    args = parser.parse_args()
    sock = zmq.Context.instance().socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SUBSCRIBE, b"tracks")  # a prefix filter: check frame 0 exactly below
    sock.connect(args.endpoint)
    seen = 0
    while args.count is None or seen < args.count:
        if not sock.poll(int(args.timeout * 1000)):
            print(f"no tracks for {args.timeout} s", file=sys.stderr)
            return 1
        frames = sock.recv_multipart()
        if frames[0] != b"tracks":
            continue
        header, _ = decode(frames)
        if header["schema"] == "csist.EndOfStream":  # the run is over
            print(f"end of stream: {header['seq']} tracks messages published", file=sys.stderr)
            break
        if header["schema"] == "csist.Skipped":  # seqs dropped inside the chain, not by us
            print(f"seq {header['seq']}-{header['fields']['last']} skipped by the chain",
                  file=sys.stderr)
            continue
        if header["schema"] != "csist.Tracks":  # the tap's heartbeat (csist.Stats)
            continue
        tracks = header["fields"]["tracks"]
        print(f"seq {header['seq']} t {header['t_source_ns'] / 1e9:.3f} s  {len(tracks)} tracks"
              + "".join(f"  #{t['track_id']} ({t['row']:.3f}, {t['col']:.3f})" for t in tracks),
              flush=True)
        seen += 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
