"""Official layout writer/reader, the compact format through load_dataset, and layout errors."""

import shutil
import xml.dom.minidom as minidom
import xml.etree.ElementTree as ET

import cv2
import numpy as np
import pytest

import sim
import sim.seqcsist_io as sio
from sim.dataset import DatasetError, SeqDataset, save_npz, simulate
from sim.seqcsist_io import annotation_xml, load_dataset, read_split, write_split, write_splits


@pytest.fixture(scope="module")
def small() -> SeqDataset:
    return simulate(3, seed=12)  # 60 frames, 2–4 targets each


@pytest.fixture
def split_dir(tmp_path, small):
    folder = tmp_path / "test"
    write_split(folder, small)
    return folder


def _minidom_text(k, targets, sigma=0.5):
    """What the reference writer produces: ElementTree → minidom.toprettyxml()."""
    root = ET.Element("annotation")
    ET.SubElement(root, "filename").text = f"COS{k}"
    size = ET.SubElement(root, "size")
    for tag, value in (("width", "11"), ("height", "11"), ("depth", "1")):
        ET.SubElement(size, tag).text = value
    ET.SubElement(root, "sigma").text = f"{sigma}"
    for row, col, brightness in targets:
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = "Target"
        coordinate = ET.SubElement(obj, "coordinate")
        ET.SubElement(coordinate, "xc").text = str(row)
        ET.SubElement(coordinate, "yc").text = str(col)
        ET.SubElement(coordinate, "brightness").text = str(brightness)
    return minidom.parseString(ET.tostring(root, encoding="utf-8")).toprettyxml()


def test_xml_template_is_byte_identical_to_minidom(small):
    for k in (0, 7, 59):
        targets = small.frame_targets(k).tolist()
        assert annotation_xml(k, small.targets[k], 0.5, 11, 11) == _minidom_text(k, targets)
    assert annotation_xml(3, np.empty((0, 3)), 0.5, 11, 11) == _minidom_text(3, [])


def test_official_round_trip_is_exact(split_dir, small):
    assert sorted(p.name for p in split_dir.iterdir()) == ["annotation", "image"]
    assert (split_dir / "annotation" / "COS59.xml").is_file()
    back = read_split(split_dir)
    np.testing.assert_array_equal(back.images, small.images)
    k = back.targets.shape[1]
    assert k == small.counts.max()
    np.testing.assert_array_equal(back.targets, small.targets[:, :k])  # bit-exact floats
    assert back.traj_len == 20 and back.sigma == 0.5


def test_npz_round_trip_through_load_dataset(tmp_path, small):
    save_npz(tmp_path / "val.npz", small)
    for ds in (load_dataset(tmp_path / "val.npz"), load_dataset(tmp_path, "val")):
        np.testing.assert_array_equal(ds.images, small.images)
        np.testing.assert_array_equal(ds.targets, small.targets)


def test_load_dataset_accepts_root_split_folder_and_reexport(tmp_path, small):
    write_splits(tmp_path, {"train": small, "test": small.subset([1])}, workers=1,
                 progress=False)
    assert len(load_dataset(tmp_path / "train")) == 60
    assert len(sim.load_dataset(tmp_path, split="test")) == 20
    with pytest.raises(DatasetError, match=r"choose a split \(available: test, train\)"):
        load_dataset(tmp_path)
    with pytest.raises(DatasetError, match=r"no split 'val' \(available: test, train\)"):
        load_dataset(tmp_path, "val")


def test_numeric_file_order(tmp_path):
    images = np.arange(20, dtype=np.uint8)[:, None, None] * np.ones((1, 11, 11), np.uint8)
    targets = np.stack([[[5.0, 5.0, 200.0 + k]] for k in range(20)])
    write_split(tmp_path / "s", SeqDataset(images, targets))
    back = read_split(tmp_path / "s")
    assert back.images[:, 0, 0].tolist() == list(range(20))  # image_10 after image_9
    assert back.targets[:, 0, 2].tolist() == [200.0 + k for k in range(20)]


def test_parallel_writer_gives_identical_files(tmp_path, small, monkeypatch):
    monkeypatch.setattr(sio, "CHUNK_FRAMES", 7)  # several tasks for two workers
    write_splits(tmp_path / "one", {"s": small}, workers=1, progress=False)
    write_splits(tmp_path / "two", {"s": small}, workers=2, progress=False)
    files = sorted(p.relative_to(tmp_path / "one") for p in (tmp_path / "one").rglob("*.*"))
    assert len(files) == 120
    for rel in files:
        assert (tmp_path / "one" / rel).read_bytes() == (tmp_path / "two" / rel).read_bytes()


def test_writer_refuses_a_non_empty_folder(split_dir, small):
    with pytest.raises(FileExistsError, match="already holds files"):
        write_split(split_dir, small)


def test_missing_xml(split_dir):
    (split_dir / "annotation" / "COS17.xml").unlink()
    with pytest.raises(DatasetError, match=r"COS17\.xml: annotation missing for image 17"):
        read_split(split_dir)


def test_wrong_image_size(split_dir):
    assert cv2.imwrite(str(split_dir / "image" / "image_4.png"), np.zeros((12, 11), np.uint8))
    with pytest.raises(DatasetError, match=r"image_4\.png: image is 12×11"):
        read_split(split_dir)


def test_colour_image_is_rejected(split_dir):
    assert cv2.imwrite(str(split_dir / "image" / "image_2.png"), np.zeros((11, 11, 3), np.uint8))
    with pytest.raises(DatasetError, match=r"image_2\.png: expected an 8-bit single-channel"):
        read_split(split_dir)


def test_frame_count_not_a_multiple_of_twenty(split_dir):
    (split_dir / "image" / "image_59.png").unlink()
    with pytest.raises(DatasetError, match="59 frames is not a multiple of the trajectory length"):
        read_split(split_dir)


def test_gap_in_numbering(split_dir):
    (split_dir / "image" / "image_5.png").rename(split_dir / "image" / "image_60.png")
    with pytest.raises(DatasetError, match=r"image_5\.png is missing"):
        read_split(split_dir)


def test_corrupt_png(split_dir):
    path = split_dir / "image" / "image_8.png"
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(DatasetError, match=r"image_8\.png: cannot decode the PNG"):
        read_split(split_dir)


def test_malformed_xml(split_dir):
    path = split_dir / "annotation" / "COS3.xml"
    path.write_text(path.read_text()[:-30])
    with pytest.raises(DatasetError, match=r"COS3\.xml: unreadable annotation"):
        read_split(split_dir)


def test_xml_missing_field_and_bad_number(split_dir):
    path = split_dir / "annotation" / "COS6.xml"
    text = path.read_text()
    path.write_text(text.replace("<sigma>0.5</sigma>", ""))
    with pytest.raises(DatasetError, match=r"COS6\.xml: missing <sigma>"):
        read_split(split_dir)
    path.write_text(text.replace("<sigma>0.5</sigma>", "<sigma>half</sigma>"))
    with pytest.raises(DatasetError, match=r"COS6\.xml: bad number"):
        read_split(split_dir)


def test_missing_split_and_empty_or_missing_folders(tmp_path, split_dir):
    with pytest.raises(DatasetError, match="no such file or folder"):
        load_dataset(tmp_path / "absent", "test")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetError, match="no dataset here"):
        load_dataset(empty, "test")
    shutil.rmtree(split_dir / "annotation")
    with pytest.raises(DatasetError, match="annotation: folder missing"):
        load_dataset(split_dir)
    for png in (split_dir / "image").iterdir():
        png.unlink()
    (split_dir / "annotation").mkdir()
    with pytest.raises(DatasetError, match="no PNG images"):
        load_dataset(split_dir)
    note = tmp_path / "note.txt"
    note.write_text("not a dataset")
    with pytest.raises(DatasetError, match="not a dataset"):
        load_dataset(note)


def test_bad_npz(tmp_path):
    np.savez(tmp_path / "test.npz", something=np.zeros(3))
    with pytest.raises(DatasetError, match="not a compact SeqCSIST file"):
        load_dataset(tmp_path, "test")
