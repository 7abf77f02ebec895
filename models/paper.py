"""The paper's Table VII (docs/reference.md §6.1), as printed: CSO-mAP and APs ×100, the
printed parameter and FLOP strings, and FPS on the authors' (unstated) hardware.

ESPCN's printed Params and FLOPs are swapped in the paper and LAMP's FLOPs unit is a typo
(docs/reference.md §6.1); the strings below are corrected and say so.
"""

from __future__ import annotations

AP_KEYS = ("mAP", "AP05", "AP10", "AP15", "AP20", "AP25")

#: Table VII method name of each registered model.
METHOD_NAMES: dict[str, str] = {
    "ista": "ISTA", "bid": "BID", "srcnn": "SRCNN", "gmfn": "GMFN", "dbpn": "DBPN",
    "srgan": "SRGAN", "bsrgan": "BSRGAN", "esrgan": "ESRGAN", "rdn": "RDN", "edsr": "EDSR",
    "espcn": "ESPCN", "tdan": "TDAN", "liht": "LIHT", "lamp": "LAMP", "istanet": "ISTA-Net",
    "fistanet": "FISTA-Net", "istanet_plus": "ISTA-Net+", "istanet_pp": "ISTA-Net++",
    "lista": "LISTA", "usrnet": "USRNet", "tilista": "TiLISTA", "rpcanet": "RPCANet",
    "derefnet": "DeRefNet",
}

# name: (FPS, Params, FLOPs, CSO-mAP, AP05, AP10, AP15, AP20, AP25)
_ROWS: dict[str, tuple] = {
    "ista": (0.1, "–", "398.57 M", 10.72, 0.14, 1.97, 8.74, 18.22, 24.53),
    "bid": (0.1, "–", "10.89 M", 14.40, 0.00, 3.00, 13.00, 26.00, 30.00),
    "srcnn": (102961, "15.84 K", "0.35 G", 49.64, 1.40, 16.30, 51.20, 85.00, 94.30),
    "gmfn": (855, "2.80 M", "27.53 G", 50.94, 0.70, 11.90, 51.20, 92.10, 98.80),
    "dbpn": (7109, "1.96 M", "4.75 G", 50.40, 0.80, 12.50, 51.20, 90.00, 97.40),
    "srgan": (12965, "35.31 M", "40.27 G", 26.96, 0.30, 3.90, 19.40, 46.90, 64.30),
    "bsrgan": (1528, "36.06 M", "0.27 T", 33.21, 0.40, 6.10, 27.50, 57.20, 74.90),
    "esrgan": (1024, "50.45 M", "0.38 T", 36.86, 0.40, 6.00, 30.30, 66.80, 80.70),
    "rdn": (919, "22.31 M", "53.97 G", 49.61, 0.70, 10.60, 48.20, 90.40, 98.20),
    "edsr": (11476, "0.39 M", "0.99 G", 50.19, 0.60, 10.30, 48.80, 92.20, 99.00),
    "espcn": (144901, "22.73 K (printed 54.75 M)", "54.75 M (printed 22.73 K)", 47.18, 1.60,
              15.30, 46.60, 80.30, 92.00),
    "tdan": (259, "0.59 M", "2.18 G", 47.96, 0.50, 8.60, 43.80, 89.30, 97.50),
    "liht": (253, "21.10 M", "0.42 G", 6.36, 0.10, 1.00, 4.30, 10.40, 16.00),
    "lamp": (7172, "2.13 M", "86.97 M (printed G)", 9.09, 0.10, 1.50, 6.50, 15.00, 22.30),
    "istanet": (4052, "0.17 M", "4.09 G", 48.95, 0.70, 11.20, 49.70, 87.70, 95.40),
    "fistanet": (4052, "74.60 K", "6.02 G", 50.61, 1.00, 12.60, 51.40, 90.70, 97.30),
    "istanet_plus": (5504, "0.38 M", "7.70 G", 51.02, 1.00, 13.70, 52.70, 90.40, 93.70),
    "istanet_pp": (1751, "0.76 M", "16.54 G", 50.50, 0.70, 10.40, 49.20, 92.80, 99.40),
    "lista": (490, "21.10 M", "0.42 G", 9.39, 0.10, 1.70, 6.90, 15.40, 22.70),
    "usrnet": (622, "1.07 M", "11.26 G", 49.25, 0.70, 9.80, 46.60, 91.20, 98.90),
    "tilista": (4716, "2.22 M", "86.97 M", 13.52, 0.20, 2.10, 9.50, 22.60, 33.30),
    "rpcanet": (2601, "0.68 M", "14.81 G", 47.17, 0.70, 10.20, 44.50, 84.60, 95.90),
    "derefnet": (367, "0.89 M", "15.70 G", 51.55, 1.00, 14.40, 54.90, 90.40, 97.10),
}


def paper_row(name: str) -> dict | None:
    """Table VII's row of registered model ``name`` (None for models not in the paper):
    ``method``, ``fps``, ``params``, ``flops`` (strings as printed, corrected where noted) and
    ``mAP``, ``AP05`` … ``AP25`` (×100)."""
    row = _ROWS.get(name)
    if row is None:
        return None
    fps, params, flops, *aps = row
    return {"method": METHOD_NAMES[name], "fps": fps, "params": params, "flops": flops,
            **dict(zip(AP_KEYS, aps, strict=True))}
