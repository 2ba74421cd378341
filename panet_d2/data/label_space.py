"""Category ids between a panoptic dataset's convention and the model's (separated) one."""

from typing import List, Tuple

from ..errors import DatasetError


class PanopticLabelSpace:
    """The thing and stuff categories of a panoptic dataset. The model's ids are Detectron2's
    separated ones (things ``0..T-1``, stuff ``1..S``): model thing ``i`` is the ``i``-th smallest
    thing contiguous id, model stuff ``s`` the ``s``-th smallest stuff one. ``is_separated``: the
    model's ids are the dataset's; ``contiguous_segments``: ``segments_info`` without
    ``"isthing"`` has contiguous ids (Detectron2's Cityscapes loader), not dataset ids."""

    def __init__(
        self,
        thing_map,
        stuff_map,
        thing_names=None,
        stuff_names=None,
        dataset_name="?",
        contiguous_segments=False,
    ):
        self.dataset_name, self.contiguous_segments = dataset_name, bool(contiguous_segments)
        things = {int(k): int(v) for k, v in thing_map.items()}
        stuff = {int(k): int(v) for k, v in stuff_map.items() if int(k) not in things}
        self._maps = (things, stuff)
        self.thing_dataset_ids, self.stuff_dataset_ids = sorted(things), sorted(stuff)
        self.thing_contiguous_ids = sorted(set(things.values()))
        self.stuff_contiguous_ids = sorted(set(stuff.values()))
        self._contiguous_to_internal = (
            {c: i for i, c in enumerate(self.thing_contiguous_ids)},
            {c: s + 1 for s, c in enumerate(self.stuff_contiguous_ids)},
        )
        self._dataset_to_internal = tuple(
            {k: table[v] for k, v in maps.items()}
            for maps, table in zip(self._maps, self._contiguous_to_internal)
        )
        self.num_things = len(self.thing_contiguous_ids)
        self.num_stuff = len(self.stuff_contiguous_ids)
        self.num_sem_classes = self.num_stuff + 1
        separated = (list(range(self.num_things)), list(range(1, self.num_stuff + 1)))
        self.is_separated = (self.thing_contiguous_ids, self.stuff_contiguous_ids) == separated

        def names(given, ids, kind):
            return [given[c] if given and 0 <= c < len(given) else f"{kind}_{c}" for c in ids]

        self.thing_classes = names(thing_names, self.thing_contiguous_ids, "thing")
        self.stuff_classes = ["things"] + names(stuff_names, self.stuff_contiguous_ids, "stuff")

    @classmethod
    def from_metadata(cls, meta) -> "PanopticLabelSpace":
        """From a Detectron2 ``Metadata`` (or a dict with the same keys)."""
        name = meta.get("name", "<unnamed dataset>")
        things = meta.get("thing_dataset_id_to_contiguous_id")
        stuff = meta.get("stuff_dataset_id_to_contiguous_id")
        if things is None or stuff is None:
            raise DatasetError(
                f"Dataset {name!r}: metadata needs 'thing_dataset_id_to_contiguous_id' and "
                "'stuff_dataset_id_to_contiguous_id' to define a panoptic label space"
            )
        stuff, stuff_names = dict(stuff), meta.get("stuff_classes")
        # Detectron2's separated metadata has a "things" stuff entry 0 -> 0.
        if stuff.get(0) == 0 and 0 not in things:
            named = stuff_names and str(stuff_names[0]).lower() in ("things", "thing")
            if named or 0 not in [v for k, v in stuff.items() if k != 0]:
                del stuff[0]
        # Detectron2's load_cityscapes_panoptic gives contiguous ids (trainIds) without "isthing"
        contiguous = meta.get("evaluator_type", None) == "cityscapes_panoptic_seg"
        return cls(things, stuff, meta.get("thing_classes"), stuff_names, name, contiguous)

    def dataset_id_to_internal(self, category_id: int) -> Tuple[bool, int]:
        """Dataset category id -> (isthing, model thing index or stuff label 1..S)."""
        for isthing, table in zip((True, False), self._dataset_to_internal):
            if int(category_id) in table:
                return isthing, table[int(category_id)]
        raise DatasetError(
            f"Unknown category id {category_id!r} in dataset {self.dataset_name!r}: neither one of "
            f"its {self.num_things} thing nor {self.num_stuff} stuff dataset category ids"
        )

    def contiguous_to_internal(self, category_id: int, isthing: bool) -> int:
        """The dataset's contiguous id (as in Detectron2-loaded ``segments_info``) -> model id."""
        table = self._contiguous_to_internal[0 if isthing else 1]
        if int(category_id) not in table:
            raise DatasetError(
                f"Unknown {'thing' if isthing else 'stuff'} contiguous category id {category_id!r}"
                f" in dataset {self.dataset_name!r}; known: {sorted(table)}"
            )
        return table[int(category_id)]

    def segment_to_internal(self, segment_info: dict) -> Tuple[bool, int]:
        """A ``segments_info`` entry -> (isthing, model id); its ``category_id`` is contiguous
        with ``"isthing"`` or :attr:`contiguous_segments`, else a dataset id."""
        if "isthing" in segment_info:
            isthing = bool(segment_info["isthing"])
        elif self.contiguous_segments:
            isthing = int(segment_info["category_id"]) in self._contiguous_to_internal[0]
        else:
            return self.dataset_id_to_internal(segment_info["category_id"])
        return isthing, self.contiguous_to_internal(segment_info["category_id"], isthing)

    def internal_to_contiguous(self, category_id: int, isthing: bool) -> int:
        """Model id (thing index, or stuff label 1..S) -> the dataset's contiguous id."""
        ids = self.thing_contiguous_ids if isthing else [None] + self.stuff_contiguous_ids
        if not (0 if isthing else 1) <= int(category_id) < len(ids):
            raise DatasetError(f"no {'thing' if isthing else 'stuff'} {category_id} in {self!r}")
        return ids[int(category_id)]

    def segments_info_to_dataset(self, segments_info: List[dict]) -> List[dict]:
        """A copy of the model's ``segments_info`` with the dataset's contiguous ``category_id``
        (what ``COCOPanopticEvaluator`` reads)."""
        return [
            dict(s, category_id=self.internal_to_contiguous(s["category_id"], bool(s["isthing"])))
            for s in segments_info
        ]

    def __eq__(self, other):
        return isinstance(other, PanopticLabelSpace) and self._maps == other._maps

    def __repr__(self):
        counts = f"{self.num_things} things, {self.num_stuff} stuff"
        return f"PanopticLabelSpace({self.dataset_name!r}, {counts})"


def label_space_of(meta):
    """The :class:`PanopticLabelSpace` of a dataset's metadata, or None if it has none."""
    try:
        return PanopticLabelSpace.from_metadata(meta)
    except DatasetError:
        return None
