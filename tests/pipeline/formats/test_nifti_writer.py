"""NIfTI writers on the real volumes in ../shared/data/medical: grid fields, codes, label tables."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from pipeline.errors import ConfigError, InputError, OutputError
from pipeline.formats.colours import default_color, parse_color
from pipeline.formats.nifti_reader import open_nifti
from pipeline.formats.nifti_writer import (
    format_ctbl,
    format_itksnap_labels,
    read_ctbl,
    read_itksnap_labels,
    write_nifti_labels,
    write_nifti_probabilities,
)
from tests.pipeline.formats.sample_data import CT, MR, MR_SEG, raw, to_ras, whole

pytestmark = pytest.mark.usefixtures("data")  # fails, never skips, when the real data is missing

NAMES = ["background", "spleen", "kidney right", "liver"]
COLORS = ["#00000000", "#ff0000", (0, 200, 0), (10, 20, 30, 128)]


def test_write_labels_keeps_grid_codes_intent_and_tables(tmp_path: Path) -> None:
    s = open_nifti(MR_SEG)
    labels = s.to_native_labels(whole(s)[0])
    out = write_nifti_labels(labels, tmp_path / "mr.nii.gz", scene=s, class_names=NAMES, class_colors=COLORS)
    src, back = nib.load(MR_SEG), nib.load(out.image)
    assert np.array_equal(back.affine, src.affine)
    for coded in ("get_qform", "get_sform"):
        (a_src, c_src), (a_out, c_out) = (
            getattr(src.header, coded)(coded=True),
            getattr(back.header, coded)(coded=True),
        )
        assert int(c_out) == int(c_src)
        assert (a_src is None and a_out is None) or np.array_equal(a_src, a_out)
    assert int(back.header["intent_code"]) == 1002
    assert back.get_data_dtype() == np.uint8
    assert back.header.get_xyzt_units() == src.header.get_xyzt_units()
    assert np.array_equal(np.asarray(back.dataobj), raw(MR_SEG))
    assert out.ctbl == tmp_path / "mr.ctbl" and out.itksnap == tmp_path / "mr_itksnap.txt"
    ctbl = read_ctbl(out.ctbl)
    assert [ctbl[i][0] for i in range(4)] == ["background", "spleen", "kidney_right", "liver"]
    assert [ctbl[i][1] for i in range(4)] == [
        (0, 0, 0, 0),
        (255, 0, 0, 255),
        (0, 200, 0, 255),
        (10, 20, 30, 128),
    ]
    assert out.ctbl.read_text().startswith("# Color table file")
    snap = read_itksnap_labels(out.itksnap)
    assert [snap[i][0] for i in range(4)] == NAMES
    assert [snap[i][1][:3] for i in range(4)] == [(0, 0, 0), (255, 0, 0), (0, 200, 0), (10, 20, 30)]
    assert snap[3][1][3] == pytest.approx(128 / 255, abs=1e-3)
    assert "IDX   -R-  -G-  -B-  -A--  VIS MSH  LABEL" in out.itksnap.read_text()
    with pytest.raises(OutputError):
        write_nifti_labels(labels, out.image, scene=s, class_names=NAMES)
    # uncompressed output and overwrite
    plain = write_nifti_labels(labels, tmp_path / "mr.nii", scene=s, class_names=NAMES, tables=False).image
    assert np.array_equal(nib.load(plain).affine, src.affine) and plain.stat().st_size > 352
    write_nifti_labels(labels, out.image, scene=s, class_names=NAMES, overwrite=True)
    assert not [p for p in tmp_path.iterdir() if ".tw-tmp-" in p.name]


def test_qform_is_copied_with_its_code(tmp_path: Path) -> None:
    img = nib.load(CT)
    data = np.asarray(img.dataobj)[:20, :20, :10]
    qimg = nib.Nifti1Image(data, img.affine)
    qimg.set_qform(img.affine, code=1)
    qimg.set_sform(img.affine @ np.diag([1.0, 1.0, 1.0, 1.0]), code=4)
    src = tmp_path / "q.nii"
    nib.save(qimg, src)
    s = open_nifti(src)
    out = write_nifti_labels(
        np.zeros(s.native_shape, np.uint8), tmp_path / "lab.nii", scene=s, class_names=NAMES
    )
    back, orig = nib.load(out.image).header, nib.load(src).header
    assert back.get_qform(coded=True)[1] == 1 and back.get_sform(coded=True)[1] == 4
    assert np.array_equal(back.get_qform(), orig.get_qform())
    assert np.array_equal(back.get_sform(), orig.get_sform())


def test_probabilities_written_on_the_input_grid(tmp_path: Path) -> None:
    s = open_nifti(MR)
    rng = np.random.default_rng(0)
    probs = rng.random((3, *s.spatial_shape)).astype(np.float32)
    native = s.to_native_scores(probs)
    assert native.shape == (3, *s.native_shape)
    p8 = write_nifti_probabilities(native, tmp_path / "p.nii.gz", scene=s)
    back = nib.load(p8)
    assert back.shape == (*s.native_shape, 3) and back.get_data_dtype() == np.uint8
    assert np.array_equal(back.affine, nib.load(MR).affine)
    assert np.abs(back.get_fdata()[..., 1] - native[1]).max() <= 0.5 / 255 + 1e-6
    pf = write_nifti_probabilities(native, tmp_path / "pf.nii", scene=s, dtype=np.float32)
    assert np.array_equal(nib.load(pf).get_fdata(dtype=np.float32), np.moveaxis(native, 0, -1))


def test_nifti2_input_gives_nifti2_labels(tmp_path: Path) -> None:
    src = nib.load(MR)
    path = tmp_path / "mr2.nii.gz"
    nib.save(
        nib.Nifti2Image(np.asarray(src.dataobj), src.affine, nib.Nifti2Header.from_header(src.header)), path
    )
    s = open_nifti(path)
    assert np.array_equal(whole(s)[0], to_ras(MR))
    out = write_nifti_labels(
        s.to_native_labels(whole(s)[0] > 100), tmp_path / "l.nii.gz", scene=s, class_names=NAMES
    )
    back = nib.load(out.image)
    assert isinstance(back, nib.Nifti2Image) and np.array_equal(back.affine, src.affine)
    assert int(back.header["intent_code"]) == 1002 and back.get_data_dtype() == np.uint8


def test_label_tables_have_the_viewers_layout() -> None:
    names, colors = ["background", "organ"], [(1, 2, 3, 255), (10, 20, 30, 128)]
    ctbl = format_ctbl(names, colors, "x.ctbl").splitlines()
    assert ctbl == ["# Color table file x.ctbl", "# 2 values", "0 background 1 2 3 0", "1 organ 10 20 30 128"]
    snap = format_itksnap_labels(names, colors).splitlines()
    assert snap[1] == "# ITK-SnAP Label Description File" and snap[0] == snap[13] == "#" * 48
    assert snap[14].split() == ["0", "1", "2", "3", "0", "0", "0", '"background"']
    assert snap[15].split() == ["1", "10", "20", "30", "0.502", "1", "1", '"organ"']


def test_label_tables_read_back(tmp_path: Path) -> None:
    names = ["background", "grey matter", 'white "matter"', " "]
    colors = [(1, 2, 3, 255), (10, 20, 30, 255), (200, 100, 0, 64), (0, 0, 0, 255)]
    ctbl, snap = tmp_path / "t.ctbl", tmp_path / "t_itksnap.txt"
    ctbl.write_text(format_ctbl(names, colors))
    snap.write_text(format_itksnap_labels(names, colors))
    # Slicer names have no spaces; class 0 is drawn clear in both viewers, whatever its colour
    assert read_ctbl(ctbl) == {
        0: ("background", (1, 2, 3, 0)),
        1: ("grey_matter", (10, 20, 30, 255)),
        2: ('white_"matter"', (200, 100, 0, 64)),
        3: ("label_3", (0, 0, 0, 255)),
    }
    back = read_itksnap_labels(snap)
    assert [back[i][0] for i in range(4)] == ["background", "grey matter", "white matter", " "]
    assert back[0][1] == (1, 2, 3, 0.0) and back[1][1] == (10, 20, 30, 1.0)
    assert back[2][1][3] == pytest.approx(64 / 255, abs=1e-3)


def test_default_colours_follow_the_shared_rule(tmp_path: Path) -> None:
    s = open_nifti(MR_SEG)
    blank = np.zeros(s.native_shape, np.uint8)
    out = write_nifti_labels(blank, tmp_path / "d.nii.gz", scene=s, class_names=NAMES)
    assert out.ctbl is not None
    table = read_ctbl(out.ctbl)
    assert [table[i][1] for i in range(4)] == [parse_color(None, index=i) for i in range(4)]
    assert table[1][1][:3] == parse_color(default_color(1))[:3]


def test_bad_destinations_and_shapes_are_refused(tmp_path: Path) -> None:
    s = open_nifti(MR_SEG)
    labels = np.zeros(s.native_shape, np.uint8)
    with pytest.raises(ConfigError, match=r"\.nii"):
        write_nifti_labels(labels, tmp_path / "l.nrrd", scene=s, class_names=NAMES)
    with pytest.raises(InputError, match="grid"):
        write_nifti_labels(labels[:-1], tmp_path / "l.nii.gz", scene=s, class_names=NAMES)
    with pytest.raises(ConfigError, match="dtype"):
        write_nifti_probabilities(np.zeros((2, *s.native_shape)), tmp_path / "p.nii", scene=s, dtype=np.int16)
    assert not list(tmp_path.iterdir())
