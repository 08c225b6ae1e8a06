"""A run that is training a LORAID slice holds it before its file reaches the registry: the LORAID tab's ID picker
and capacity table and the Train tab's LORAID picker list it as taken while the run's reservation is live."""
from __future__ import annotations

from backend.jobs import JobManager
from backend.loraid.allocation import allocate
from backend.models.demo import build_demo_workspace
from backend.models.registry import get_model_kind
from backend.train.outputs import Reservation, reservation_path
from ui.context import AppContext
from ui.tabs.loraid import LoraidPanel
from ui.train_network import loraid_choices
from ui.train_panel import TrainPanel


def test_a_running_runs_slice_is_listed_as_taken_until_it_ends(tmp_path):
    ws = build_demo_workspace(tmp_path / "ws", seed=0)
    ctx = AppContext(ws, JobManager(tmp_path / "jobs"))
    settings = TrainPanel(ctx).store.load("shipped:lora").model_copy(update={"loraid": None, "output_dir": ""})
    kind = get_model_kind(settings.model_kind)
    k = settings.blocks_per_loraid
    busy = allocate(2, kind.num_blocks, k, model=kind.name)
    loraid_tab, train = LoraidPanel(ctx), TrainPanel(ctx)

    def shown():
        _, rows, _, picker, *_ = loraid_tab.allocation(str(ws.demo_t2v), k, None, False, 4, 1)
        taken_column = {row[0]: row[-1] for row in rows}
        id_labels = dict((value, label) for label, value in picker["choices"])
        train_labels = dict((value, label) for label, value in loraid_choices(settings, train._taken(settings)))
        return taken_column, id_labels, train_labels

    free_column, free_ids, free_train = shown()
    assert free_column["2"] == "free" and free_ids[2] == "2" and free_train[2].endswith("(free)")
    with Reservation(ws.loras, "concept-b", busy):  # this test's own process is the live run
        assert reservation_path(ws.loras, "concept-b").is_file()
        taken_column, id_labels, train_labels = shown()
        assert taken_column["2"] == "concept-b (training now)"
        assert id_labels[2] == "2 (taken by concept-b (training now))"
        assert train_labels[2].endswith("(taken by concept-b (training now))")
        assert {key: value for key, value in taken_column.items() if key != "2"} == \
            {key: value for key, value in free_column.items() if key != "2"}  # the other IDs stay as they were
        assert id_labels[1] == free_ids[1] and train_labels[1] == free_train[1]
    assert shown() == (free_column, free_ids, free_train)  # the run ended: the slice is free again
