"""The store remembers which groups and which classifier made its object priors."""

from landmark.config import load_config
from landmark.index import Store
from landmark.recognition.filters import ClassGroups
from landmark.recognition.setup import priors_stale, record_groups

from store_helpers import SIG


def test_priors_made_by_another_classifier_or_groups_are_stale(tmp_path):
    store = Store.create(tmp_path / "s", load_config(), SIG)
    groups = ClassGroups.load()
    assert not priors_stale(store, groups, "own")                  # nothing recorded yet: nothing to redo
    record_groups(store, groups)                                    # made by the backbone's own head
    assert not priors_stale(store, groups, "own")
    tail = "pretrained tf_efficientnet_lite2 from stage 6"
    assert priors_stale(store, groups, tail)                       # a fine-tuned model now reads a pretrained tail
    record_groups(store, groups, tail)
    assert not priors_stale(store, groups, tail) and priors_stale(store, groups, "own")
    other = ClassGroups(groups.names[:-1], groups.roles[:-1], groups.index.clip(max=len(groups.names) - 2))
    assert priors_stale(store, other, tail)
