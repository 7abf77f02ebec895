"""An outside blob detector in its own process, speaking only the documented wire format.

It reads frames from a pipeline's tap (``run.publish``), finds blobs (white top-hat, robust
threshold, 8-connected components, intensity-weighted centroids) and PUSHes one ``csist.Blobs``
message per frame, with the frame's ``seq`` and ``t_source_ns``, to the pipeline's
``external_input`` stage. Only pyzmq, msgpack, numpy and scipy are used: any program that
writes these messages can replace it.

    python -m pipeline run configs/external-detector.yaml &
    python examples/external_detector.py --frames tcp://127.0.0.1:5555 \\
        --blobs tcp://127.0.0.1:5556
"""

import argparse
import sys

import msgpack
import numpy as np
import zmq
from scipy import ndimage

DTYPES = {"|u1", "<u2", "<i2", "<i4", "<f4", "<f8"}  # the wire's allow-list


def frame_image(frames):
    """Header and image of a csist.Frame message [topic, header, image buffer]."""
    header = msgpack.unpackb(frames[1], raw=False)
    if header["schema"] != "csist.Frame" or header["version"] != 3:
        raise ValueError(f"expected csist.Frame version 3, got {header['schema']} "
                         f"{header['version']}")
    (desc,) = header["buffers"]
    if desc["dtype"] not in DTYPES:
        raise ValueError(f"dtype {desc['dtype']} is not on the wire's allow-list")
    return header, np.frombuffer(frames[2], dtype=desc["dtype"]).reshape(desc["shape"])


def detect(image, k=8.0, size=9, min_area=2, max_area=64):
    """Blobs of one frame as wire records {row, col, peak, area, snr} (frame pixels)."""
    img = image.astype(np.float32)
    response = img - ndimage.grey_opening(img, size=(size, size))  # white top-hat
    sample = response[::2, ::2]
    centre = float(np.median(sample))
    spread = max(1.4826 * float(np.median(np.abs(sample - centre))), 1e-6)
    labels, n = ndimage.label(response > centre + k * spread, structure=np.ones((3, 3)))
    index = np.arange(1, n + 1)
    areas = ndimage.sum_labels(np.ones_like(response), labels, index)
    peaks = ndimage.maximum(response, labels, index)
    centres = ndimage.center_of_mass(response, labels, index)
    return [
        {"row": float(r), "col": float(c), "peak": float(p), "area": int(a),
         "snr": float(p) / spread}
        for (r, c), p, a in zip(centres, peaks, areas, strict=True)
        if min_area <= a <= max_area
    ]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", required=True, help="the pipeline's run.publish.endpoint")
    parser.add_argument("--blobs", required=True, help="the external_input stage's endpoint")
    parser.add_argument("--k", type=float, default=8.0, help="threshold in noise sigmas")
    parser.add_argument("--count", type=int, help="exit after N frames")
    parser.add_argument("--wait", type=float, default=60.0, help="wait S s for the first frame")
    parser.add_argument("--idle", type=float, default=10.0,
                        help="then exit after S s without a frame")
    args = parser.parse_args()
    ctx = zmq.Context.instance()
    frames_in = ctx.socket(zmq.SUB)
    frames_in.setsockopt(zmq.LINGER, 0)
    frames_in.setsockopt(zmq.SUBSCRIBE, b"frames")
    frames_in.connect(args.frames)
    blobs_out = ctx.socket(zmq.PUSH)
    blobs_out.setsockopt(zmq.LINGER, 1000)  # let the last answers leave on exit
    blobs_out.connect(args.blobs)
    handled = 0
    while args.count is None or handled < args.count:
        if not frames_in.poll(int((args.idle if handled else args.wait) * 1000)):
            break
        frames = frames_in.recv_multipart()
        if frames[0] != b"frames":
            continue
        schema = msgpack.unpackb(frames[1], raw=False).get("schema")
        if schema == "csist.EndOfStream":  # the run is over
            break
        if schema != "csist.Frame":  # a Skipped notice or the tap's heartbeat (csist.Stats)
            continue
        frame, image = frame_image(frames)
        header = {"schema": "csist.Blobs", "version": 3, "topic": "blobs", "seq": frame["seq"],
                  "t_source_ns": frame["t_source_ns"], "sensor": frame["sensor"],
                  "sensor_seq": frame["sensor_seq"], "stamps": {},
                  "fields": {"blobs": detect(image, args.k)}, "buffers": []}
        blobs_out.send_multipart([b"blobs", msgpack.packb(header, use_bin_type=True)])
        handled += 1
    print(f"done after {handled} frames", file=sys.stderr)
    blobs_out.close()
    frames_in.close()
    ctx.term()
    return 0


if __name__ == "__main__":
    sys.exit(main())
