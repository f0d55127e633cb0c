"""Mask2Former through mmsegmentation, proven on CPU with a small randomly initialised instance
of the real architecture (the R50 ADE20K config, shrunk): mmseg's checkpoint format loads
strictly and reproduces the instance it came from; it runs in the pipeline; the consensus
accepts its ADE20K labels."""
import numpy as np
import pytest
import torch

pytest.importorskip(
    "mmseg", reason="needs the mmseg extra (pip install -e '.[mmseg-cpu]'); scripts/test.sh installs it"
)

from labelmaker.consensus import ConsensusConfig  # noqa: E402
from labelmaker.io.arkitscenes import ArkitScenesConfig  # noqa: E402
from labelmaker.labels import label_space  # noqa: E402
from labelmaker.pipeline.label_stages import consensus_scene, model_votes, segment_scene  # noqa: E402
from labelmaker.pipeline.stages import import_scene  # noqa: E402
# noqa: E402
from labelmaker.segmenters.base import Mask2FormerConfig, ModelConfig, build_segmenter, clear_segmenter_cache
from labelmaker.checkpoints import CheckpointError  # noqa: E402
from labelmaker.segmenters.mask2former import build_model  # noqa: E402
from labelmaker.workspace import Workspace  # noqa: E402

# The R50 ADE20K config with a ResNet-18 trunk, one encoder and one decoder layer, 10 queries.
SMALL = {"model.backbone.depth": 18, "model.decode_head.in_channels": [64, 128, 256, 512],
         "model.decode_head.num_queries": 10, "model.decode_head.transformer_decoder.num_layers": 1,
         "model.decode_head.pixel_decoder.encoder.num_layers": 1}


def small_config(checkpoint=None, input_size=64) -> Mask2FormerConfig:
    return Mask2FormerConfig(config="mask2former_r50_8xb2-160k_ade20k-512x512.py", checkpoint=checkpoint,
                             input_size=input_size, cfg_options=dict(SMALL), allow_cpu_ops_stand_in=True)


def model_config(folder, checkpoint="m2f_small.pth", **kw) -> ModelConfig:
    return ModelConfig(kind="mask2former", label_space="ade20k", device="cpu", checkpoint_dir=str(folder),
                       mask2former=small_config(checkpoint), **kw)


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    """A random small Mask2Former saved as mmseg saves checkpoints: {'state_dict', 'meta'}."""
    torch.manual_seed(0)
    model = build_model(small_config())
    folder = tmp_path_factory.mktemp("checkpoints")
    torch.save({"state_dict": model.state_dict(),
                "meta": {"mmseg_version": "1.2.2", "dataset_meta": {"classes": label_space("ade20k").names[:150]}}},
               folder / "m2f_small.pth")
    return model, folder


@pytest.mark.slow
def test_checkpoint_loads_strictly_and_gives_the_same_output(saved_model):
    model, folder = saved_model
    loaded = build_segmenter("m2f", model_config(folder))
    assert loaded.model is not model
    original = build_segmenter("m2f", model_config(folder, checkpoint=None))
    original.model = model
    images = np.random.default_rng(0).integers(0, 256, (2, 60, 80, 3), dtype=np.uint8)
    with torch.inference_mode():
        a, b = original.scores(images), loaded.scores(images)
    assert a.shape == (2, 150, 60, 80)
    assert torch.equal(a, b)
    labels = loaded.predict_images(images)
    assert labels.shape == (2, 60, 80) and len(np.unique(labels)) > 1
    assert np.array_equal(labels, original.predict_images(images))
    fresh = build_segmenter("m2f", model_config(folder, checkpoint=None))  # another random instance differs
    with torch.inference_mode():
        assert not torch.equal(fresh.scores(images), a)


@pytest.mark.slow
def test_a_checkpoint_of_another_network_is_refused(saved_model, tmp_path):
    model, _ = saved_model
    state = model.state_dict()
    state.pop(next(iter(state)))
    state["decode_head.extra.weight"] = torch.zeros(1)
    torch.save({"state_dict": state, "meta": {}}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match=r"1 missing keys.*1 unexpected.*Fix: pair the checkpoint"):
        build_segmenter("m2f", model_config(tmp_path, checkpoint="other.pth"))
    torch.save(state, tmp_path / "plain.pth")
    with pytest.raises(CheckpointError, match="is not an mmseg checkpoint"):
        build_segmenter("m2f", model_config(tmp_path, checkpoint="plain.pth"))


def test_a_missing_checkpoint_fails_the_stage_with_the_fetch_command(synth_scene_factory, tmp_path):
    scene = synth_scene_factory(seed=3, n_frames=6, sky_direction="Left")
    ws = Workspace(tmp_path / "ws")
    import_scene(scene.video_dir, ws, ArkitScenesConfig(shard_size=4), progress=False)
    cfg = ModelConfig(kind="mask2former", device="cpu", checkpoint_dir=str(tmp_path / "ckpt"),
                      mask2former=Mask2FormerConfig(allow_cpu_ops_stand_in=True))  # the Swin-L default
    with pytest.raises(CheckpointError, match="download_checkpoints.py mask2former_swin-l_ade20k --dir"):
        segment_scene(ws, "mask2former", cfg, progress=False)
    assert ws.read_state("segment-mask2former")["status"] == "failed"


@pytest.mark.slow
def test_mask2former_in_the_pipeline(saved_model, synth_scene_factory, tmp_path):
    _, folder = saved_model
    scene = synth_scene_factory(seed=3, n_frames=6, sky_direction="Left")
    ws = Workspace(tmp_path / "ws")
    import_scene(scene.video_dir, ws, ArkitScenesConfig(shard_size=4), progress=False)
    clear_segmenter_cache()
    cfg = model_config(folder, batch_size=2, flip_tta=True)
    outcome = segment_scene(ws, "mask2former", cfg, progress=False)
    assert outcome.record["summary"]["label_space"] == "ade20k"
    labels, mirrored = model_votes(ws, "mask2former", 0)
    frames = ws.read_frame_shard(0)
    assert labels.shape == mirrored.shape == frames.color.shape[:3]
    assert labels.max() < 150 and len(np.unique(labels)) > 1
    consensus_scene(ws, {"mask2former": cfg}, ConsensusConfig(device="cpu"), progress=False)
    assert ws.is_done("consensus")
    assert ws.consensus_shards.read(0)["labels"].shape == labels.shape


def test_pure_pytorch_deformable_attention_is_an_explicit_opt_in_on_cuda(monkeypatch):
    """On CUDA without compiled mmcv ops, MultiScaleDeformableAttention calls the (missing)
    kernel; with the opt-in it takes mmcv's pure-PyTorch function instead, with the CPU path's
    results. Tried here on the CPU with a tensor that says it is on CUDA, so mmcv takes its CUDA branch."""
    from labelmaker.segmenters.mmcv_ops import deform_attn_path, ensure_mmcv_ops, use_pytorch_deform_attn

    ensure_mmcv_ops(True, "cpu")
    from mmcv.ops import multi_scale_deform_attn as msda

    # restored afterwards
    monkeypatch.setattr(msda, "MultiScaleDeformableAttnFunction", msda.MultiScaleDeformableAttnFunction)

    class SaysCuda(torch.Tensor):
        @property
        def is_cuda(self):
            return True

    torch.manual_seed(0)
    attn = msda.MultiScaleDeformableAttention(embed_dims=32, num_heads=2, num_levels=2, num_points=2, batch_first=True)
    attn.eval()
    query, ref = torch.randn(1, 20, 32), torch.rand(1, 20, 2, 2)
    shapes, start = torch.tensor([[4, 4], [2, 2]]), torch.tensor([0, 16])

    def run(q):
        return attn(q, value=q, reference_points=ref, spatial_shapes=shapes, level_start_index=start).as_subclass(
            torch.Tensor
        )

    cpu_result = run(query)
    monkeypatch.setattr(msda, "IS_CUDA_AVAILABLE", True)
    if mmcv_ops_status_is_stand_in():
        # the kernel a GPU without compiled mmcv lacks
        with pytest.raises(NotImplementedError, match="ms_deform_attn_forward"):
            run(query.as_subclass(SaysCuda))
    use_pytorch_deform_attn()
    assert torch.equal(run(query.as_subclass(SaysCuda)), cpu_result)

    ok, detail, fix = deform_attn_path("missing", cuda=True, allow_stand_in=True, pytorch_on_cuda=False)
    assert not ok and "pytorch_deform_attn_on_cuda=true" in fix  # the CPU stand-in alone is not enough on CUDA
    assert deform_attn_path("missing", cuda=True, allow_stand_in=False, pytorch_on_cuda=True)[:2] == (
        True,
        "pure PyTorch on CUDA (opted in: mask2former.pytorch_deform_attn_on_cuda; slower than the kernel)",
    )
    assert (
        deform_attn_path("compiled", cuda=True, allow_stand_in=False, pytorch_on_cuda=True)[1]
        == "compiled CUDA kernel (mmcv._ext)"
    )


def mmcv_ops_status_is_stand_in() -> bool:
    from labelmaker.segmenters.mmcv_ops import mmcv_ops_status

    return mmcv_ops_status() == "stand-in"


def test_doctor_says_which_deformable_attention_runs_on_a_gpu(monkeypatch, capsys, tmp_path):
    from labelmaker.doctor import DoctorFailed, doctor
    from labelmaker.segmenters import mmcv_ops

    torch.save({"state_dict": {}}, tmp_path / "m2f.pth")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a GPU node without compiled mmcv
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.setattr(mmcv_ops, "mmcv_ops_status", lambda: "missing")
    cfg = model_config(tmp_path, checkpoint="m2f.pth")
    cfg.device = "auto"
    with pytest.raises(DoctorFailed, match="deformable attention"):
        doctor({"m2f": cfg})
    assert "pytorch_deform_attn_on_cuda=true" in capsys.readouterr().out
    cfg.mask2former.pytorch_deform_attn_on_cuda = True
    checks = {c.name: c for c in doctor({"m2f": cfg})}
    assert (
        checks["deformable attention"].ok and "pure PyTorch on CUDA (opted in" in checks["deformable attention"].detail
    )
