"""Parallel LORAID slices on the CPU: two demo IDs train at the same time as two processes, then one job merges
both into the base; the merged DiT computes what the base with both slice files injected computes (1e-5)."""
from __future__ import annotations

import time

import torch

from backend.adapters.formats import load_lora
from backend.adapters.network import AdapterNetwork
from backend.jobs import JobManager
from backend.models.loading import load_transformer
from backend.train.slices import plan_slices, submit_slices



def _wait_finished(manager, job_id):
    """Waits on the job's progress (its status), not on a time allowance."""
    while not manager.get(job_id).is_finished:
        time.sleep(0.2)
    return manager.get(job_id)


def test_two_slices_train_at_once_and_merge_into_the_base(demo_workspace, demo_settings, tmp_path):
    settings = demo_settings.with_overrides({"max_train_steps": 4, "output_dir": str(tmp_path / "slices"),
                                             "output_name": "pair", "max_data_loader_n_workers": 0})
    manager = JobManager(tmp_path / "jobs", max_concurrent=1)  # the limit counts unpinned jobs only
    jobs = submit_slices(manager, settings, demo_workspace, [1, 2], merge_out=str(tmp_path / "merged.safetensors"))
    first, second, merge = jobs
    assert [job.device for job in (first, second)] == ["cpu0", "cpu1"]
    assert first.env["CUDA_VISIBLE_DEVICES"] == "" and merge.after == [first.id, second.id]
    assert "LORAID 1" in first.title and "CPU slot 0" in first.title
    done = [_wait_finished(manager, job.id) for job in jobs]
    assert [job.status for job in done] == ["succeeded"] * 3, [job.error for job in done]
    a, b, merged = done
    assert a.started < b.ended and b.started < a.ended  # the two slices ran at the same time
    assert merged.started >= max(a.ended, b.ended)

    base_path = demo_workspace.demo_t2v / "transformer.safetensors"
    model = load_transformer(base_path, "demo-t2v")
    networks = []
    for loraid in (1, 2):
        lora = load_lora(tmp_path / "slices" / f"pair-loraid{loraid}.safetensors")
        networks.append(AdapterNetwork.from_weights(model, lora.tensors, lora.flags, name=f"slice{loraid}").inject())
    inputs = {"hidden_states": torch.randn(1, 16, 1, 8, 8, generator=torch.Generator().manual_seed(0)),
              "timestep": torch.tensor([500.0]),
              "encoder_hidden_states": torch.randn(1, 16, 32, generator=torch.Generator().manual_seed(1))}
    with torch.no_grad():
        injected = model(**inputs, return_dict=False)[0]
        for network in networks:
            network.remove()
        base = model(**inputs, return_dict=False)[0]
        folded = load_transformer(tmp_path / "merged.safetensors", "demo-t2v")(**inputs, return_dict=False)[0]
    assert (injected - base).abs().max() > 1e-4  # the slices really changed the model
    torch.testing.assert_close(folded, injected, atol=1e-5, rtol=0)


def test_more_slices_than_devices_queue_round_robin(demo_settings):
    plans = plan_slices(demo_settings, [1, 2, 3], ["0", "1"])
    assert [(plan.loraid, plan.device, plan.visible_devices) for plan in plans] == [(1, "0", "0"), (2, "1", "1"),
                                                                                    (3, "0", "0")]
    assert plans[2].settings.output_name == "demo-concept-a-loraid3" and plans[2].settings.loraid == 3
