"""Video deraining: timing, audio, rotation and frames kept; rain removed; bad input named."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

av = pytest.importorskip("av", reason="video needs PyAV (pip install 'derain[video]')")

import derain_cli.media.video as video  # noqa: E402
from derain_cli.cli import app  # noqa: E402
from derain_cli.inference.engine import InferenceEngine  # noqa: E402
from derain_cli.methods import get_method  # noqa: E402
from derain_cli.data.synth import STYLES, add_rain  # noqa: E402

from conftest import make_checkpoint, rainy_picture  # noqa: E402

runner = CliRunner()
FPS = 12


def background(height: int = 48, width: int = 64) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([x / width, y / height, 0.5 + 0.3 * np.sin(x / 7.0)], axis=2) * 0.7 + 0.1
    return (base * 255).astype(np.uint8)


def make_clip(path: Path, frames: int = 12, audio: bool = True, rotation: int = 0, rain: bool = True) -> list[np.ndarray]:
    """A static scene with fresh light rain in every frame, 12 fps, H.264 + AAC; returns the rainy frames."""
    clean = background()
    rainy = [add_rain(clean, STYLES["light"], 7, k) if rain else clean for k in range(frames)]
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = clean.shape[1], clean.shape[0], "yuv420p"
        stream.options = {"crf": "10"}
        if rotation:
            stream.set_display_rotation(rotation)
        sound = out.add_stream("aac", rate=16000) if audio else None
        if sound is not None:
            sound.layout = "mono"
        for frame in rainy:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                out.mux(packet)
        if sound is not None:
            samples = (0.3 * np.sin(np.arange(16000 * frames // FPS) / 9.0)).astype(np.float32)[None]
            for start in range(0, samples.shape[1], 1024):
                chunk = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples[:, start : start + 1024]), format="fltp", layout="mono")
                chunk.sample_rate = 16000
                for packet in sound.encode(chunk):
                    out.mux(packet)
        for s in (stream, sound):
            if s is not None:
                for packet in s.encode():
                    out.mux(packet)
    return rainy


def rain_energy(frames: list[np.ndarray]) -> float:
    """Mean brightening of the luminance over the clean scene (rain streaks add light; the
    codec's error is symmetric and cancels)."""
    clean = background().astype(np.float32).mean(axis=2)
    return float(np.mean([np.clip(f.astype(np.float32).mean(axis=2) - clean, 0, None).mean() for f in frames]))


def probe(path: Path) -> dict:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = [f for f in container.decode(video=0)]
        return {
            "frames": [f.to_ndarray(format="rgb24") for f in frames],
            "pts": [f.pts * f.time_base for f in frames],
            "rate": stream.average_rate,
            "duration": container.duration,
            "audio": len(container.streams.audio),
            "rotation": frames[0].rotation,
        }


def test_cli_derains_a_clip_keeping_frames_timing_audio_and_rain_falls(tmp_path):
    clip = tmp_path / "dashcam.mp4"
    make_clip(clip)
    result = runner.invoke(app, ["remove", str(clip), "-o", str(tmp_path / "clean.mp4"), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    before, after = probe(clip), probe(tmp_path / "clean.mp4")
    assert len(after["frames"]) == len(before["frames"]) == 12
    assert after["rate"] == before["rate"] == FPS and after["pts"] == before["pts"]
    assert abs(after["duration"] - before["duration"]) <= 1e6 / FPS  # microseconds
    assert after["audio"] == 1
    assert rain_energy(after["frames"]) < 0.3 * rain_energy(before["frames"])  # the shipped lpnet removes rain
    assert not list(tmp_path.glob(".*derain-tmp*"))


def test_rotation_is_kept_and_frames_reach_the_network_upright(tmp_path):
    clip = tmp_path / "phone.mp4"
    make_clip(clip, frames=4, audio=False, rotation=90, rain=False)
    shapes = []

    def identity(frames):
        shapes.extend(f.shape for f in frames)
        return frames

    video.derain_video(clip, tmp_path / "out.mp4", identity)
    assert set(shapes) == {(64, 48, 3)}  # stored 64 wide x 48 high, shown turned by 90 degrees
    after = probe(tmp_path / "out.mp4")
    assert after["rotation"] == 90 and after["frames"][0].shape == (48, 64, 3)
    assert np.abs(after["frames"][2].astype(int) - probe(clip)["frames"][2]).mean() < 2  # back the way it came


def test_engine_batches_frames_with_the_same_result_as_one_by_one(tmp_path):
    for name in ("lpnet", "ddn"):  # ddn normalises by whole-picture statistics: never batched
        spec = get_method(name)
        model = spec.build()
        model.load_state_dict(dict(__import__("safetensors.torch", fromlist=["x"]).load_file(
            make_checkpoint(name, tmp_path / f"{name}.safetensors"))))
        engine = InferenceEngine(model, spec, "cpu")
        frames = [rainy_picture(40, 52, seed=k) for k in range(3)]
        batched = engine.run_batch(frames)
        for frame, out in zip(frames, batched):
            assert np.abs(out["image"].astype(int) - engine.run(frame)["image"]).max() <= 1


def test_interrupt_leaves_no_output_and_no_temporary(tmp_path, monkeypatch):
    clip = tmp_path / "clip.mp4"
    make_clip(clip, frames=10, audio=False)
    calls = []

    def interrupted(frames):
        calls.append(len(frames))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return frames

    with pytest.raises(KeyboardInterrupt):
        video.derain_video(clip, tmp_path / "out.mp4", interrupted, video.VideoOptions(batch=2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4"]


def test_ctrl_c_in_the_cli_exits_130(tmp_path, monkeypatch):
    clip = tmp_path / "clip.mp4"
    make_clip(clip, frames=4, audio=False)

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(InferenceEngine, "run_batch", interrupt)
    result = runner.invoke(app, ["remove", str(clip), "-o", str(tmp_path / "out.mp4"), "--device", "cpu"])
    assert result.exit_code == 130 and not (tmp_path / "out.mp4").exists()


def test_bad_videos_get_one_line_and_the_batch_goes_on(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    make_clip(folder / "good.mp4", frames=3, audio=False)
    (folder / "garbage.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"junk" * 50)
    (folder / "empty.mov").touch()
    result = runner.invoke(app, ["remove", str(folder), "-o", str(tmp_path / "out"), "--device", "cpu"])
    assert result.exit_code == 1
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 2 and any("garbage.mp4" in e for e in errors) and any("empty.mov" in e for e in errors)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["good.mp4"]


def test_codec_and_quality_options(tmp_path):
    clip = tmp_path / "clip.mp4"
    make_clip(clip, frames=3, audio=True)
    result = runner.invoke(app, ["remove", str(clip), "-o", str(tmp_path / "clip.mkv"), "--codec", "ffv1", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    with av.open(str(tmp_path / "clip.mkv")) as container:
        assert container.streams.video[0].codec_context.name == "ffv1" and len(container.streams.audio) == 1
    bad = runner.invoke(app, ["remove", str(clip), "-o", str(tmp_path / "x.mp4"), "--codec", "aac"])
    assert bad.exit_code == 2 and "--codec aac" in bad.output


def test_without_pyav_a_video_fails_with_the_install_line(tmp_path, monkeypatch):
    clip = tmp_path / "clip.mp4"
    make_clip(clip, frames=2, audio=False)

    def missing():
        raise video.UsageError("video needs PyAV, which is not installed: pip install 'derain[video]'")

    monkeypatch.setattr(video, "require_av", missing)
    result = runner.invoke(app, ["remove", str(clip), "-o", str(tmp_path / "out.mp4"), "--device", "cpu"])
    assert result.exit_code == 1 and "pip install 'derain[video]'" in result.output


def test_frame_rate_fraction_of_ntsc_is_kept(tmp_path):
    clip = tmp_path / "ntsc.mp4"
    with av.open(str(clip), "w") as out:
        stream = out.add_stream("libx264", rate=Fraction(30000, 1001))
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for k in range(5):
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.full((32, 32, 3), 40 * k, np.uint8), format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    video.derain_video(clip, tmp_path / "out.mp4", lambda frames: frames)
    assert probe(tmp_path / "out.mp4")["rate"] == Fraction(30000, 1001)
    assert probe(tmp_path / "out.mp4")["pts"] == probe(clip)["pts"]


def test_temporal_filter_steadies_still_parts_and_leaves_motion_alone():
    rng = np.random.default_rng(0)
    scene = background(64, 96)
    steady = video.TemporalFilter(0.7)
    moving_box = lambda k: (slice(10, 40), slice(4 + 12 * k, 28 + 12 * k))  # noqa: E731
    outputs, inputs = [], []
    for k in range(6):
        frame = scene.copy()
        streaks = rng.random(frame.shape[:2]) < 0.01  # thin leftover rain, new every frame
        frame[streaks] = np.minimum(frame[streaks].astype(int) + 60, 255)
        frame[moving_box(k)] = 255  # a white box moving 12 px per frame
        inputs.append(frame)
        outputs.append(steady(frame))
    flicker = lambda frames, region: np.mean([np.abs(a[region].astype(int) - b[region]).mean() for a, b in zip(frames, frames[1:])])  # noqa: E731
    still = (slice(44, 64), slice(None))  # below the box's path
    assert flicker(outputs, still) < 0.6 * flicker(inputs, still)
    for k in range(1, 6):  # the box is where it is now, with no trail behind it
        assert (outputs[k][moving_box(k)] >= 250).all()
        trail = outputs[k][15:35, 4 + 12 * (k - 1) : 4 + 12 * k]
        assert np.abs(trail.astype(int) - scene[15:35, 4 + 12 * (k - 1) : 4 + 12 * k]).mean() < 20
    assert np.array_equal(video.TemporalFilter(0.0)(inputs[1]), inputs[1])
    with pytest.raises(video.UsageError):
        video.TemporalFilter(1.0)


def make_odd_clip(path: Path, height: int = 47, width: int = 63, frames: int = 3) -> None:
    """A lossless (FFV1) clip of an odd size, which x264 cannot encode as it is."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream("ffv1", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv444p"
        for k in range(frames):
            frame = add_rain(background(height, width), STYLES["light"], 3, k)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def test_odd_sized_video_is_padded_for_even_only_encoders_and_kept_by_the_others(tmp_path, monkeypatch):
    clip = tmp_path / "odd.mkv"
    make_odd_clip(clip)
    result = runner.invoke(app, ["remove", str(clip), "-o", str(tmp_path / "clean.mp4"), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    frames = probe(tmp_path / "clean.mp4")["frames"]
    assert len(frames) == 3 and frames[0].shape == (48, 64, 3)  # one repeated row and column for x264
    assert np.abs(frames[0][-1].astype(int) - frames[0][-2]).mean() < 6  # a copy of the last row, not black
    result = runner.invoke(app, ["remove", str(clip), "-o", str(tmp_path / "clean.webm"), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert probe(tmp_path / "clean.webm")["frames"][0].shape == (47, 63, 3)  # VP9 takes odd sizes

    monkeypatch.setattr(video, "encoded_size", lambda codec, width, height: (width, height))  # as before the fix
    result = runner.invoke(app, ["remove", str(clip), "-o", str(tmp_path / "raw.mp4"), "--device", "cpu"])
    assert result.exit_code == 1
    error = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and f"{clip}: the libx264 encoder failed" in error[0] and "try --codec libvpx-vp9" in error[0]
    assert not (tmp_path / "raw.mp4").exists() and not list(tmp_path.glob(".*derain-tmp*"))


def test_spanet_derains_a_clip_whole_frame_by_frame(tmp_path):
    """spanet is never tiled: each frame runs whole, and the clip keeps its frames and timing."""
    clip = tmp_path / "street.mp4"
    make_clip(clip, frames=3, audio=False)
    result = runner.invoke(app, ["remove", str(clip), "-m", "spanet.spa", "-o", str(tmp_path / "clean.mp4"), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    before, after = probe(clip), probe(tmp_path / "clean.mp4")
    assert len(after["frames"]) == len(before["frames"]) == 3 and after["pts"] == before["pts"]
    assert after["frames"][0].shape == before["frames"][0].shape
