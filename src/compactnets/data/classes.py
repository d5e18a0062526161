"""Class names of the datasets the published models were trained on, in label-index order."""

CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip

CIFAR100_CLASSES = (
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle", "bottle", "bowl",
    "boy", "bridge", "bus", "butterfly", "camel", "can", "castle", "caterpillar", "cattle", "chair",
    "chimpanzee", "clock", "cloud", "cockroach", "couch", "crab", "crocodile", "cup", "dinosaur", "dolphin",
    "elephant", "flatfish", "forest", "fox", "girl", "hamster", "house", "kangaroo", "keyboard", "lamp",
    "lawn_mower", "leopard", "lion", "lizard", "lobster", "man", "maple_tree", "motorcycle", "mountain",
    "mouse", "mushroom", "oak_tree", "orange", "orchid", "otter", "palm_tree", "pear", "pickup_truck",
    "pine_tree", "plain", "plate", "poppy", "porcupine", "possum", "rabbit", "raccoon", "ray", "road",
    "rocket", "rose", "sea", "seal", "shark", "shrew", "skunk", "skyscraper", "snail", "snake", "spider",
    "squirrel", "streetcar", "sunflower", "sweet_pepper", "table", "tank", "telephone", "television",
    "tiger", "tractor", "train", "trout", "tulip", "turtle", "wardrobe", "whale", "willow_tree", "wolf",
    "woman", "worm",
)  # fmt: skip


def class_names(dataset: str) -> tuple[str, ...] | None:
    """Label names for 'cifar10', 'cifar100' or 'imagenet' (torchvision's ImageNet-1k names); else None."""
    if dataset == "cifar10":
        return CIFAR10_CLASSES
    if dataset == "cifar100":
        return CIFAR100_CLASSES
    if dataset == "imagenet":
        from torchvision.models._meta import _IMAGENET_CATEGORIES

        return tuple(_IMAGENET_CATEGORIES)
    return None


def _some(names, n: int = 4) -> str:
    shown = ", ".join(ascii(x)[1:-1] if not x.isprintable() else x for x in list(names)[:n])
    return shown + (f", ... ({len(names)} in all)" if len(names) > n else "")


def match_classes(data_classes, model_classes, num_classes: int) -> tuple[list[int] | None, str | None]:
    """How the labels of a dataset map to a model's outputs, by class name.

    Returns ``(mapping, note)``: ``mapping[i]`` is the model's index of the data's class ``i`` (None when the
    data's labels already are the model's), and a note for the user when the classes differ but a correct
    evaluation is still possible (a subset of the model's classes, another order, or class names that are not
    the model's at all, such as ImageNet folder ids, for as many classes as the model has: the folder order is
    then taken as the label order). Raises a DataError when the data has classes the model lacks, or another
    number of classes with no name in common.
    """
    from ..errors import DataError

    data_classes = list(data_classes)
    if model_classes is None:
        if len(data_classes) != num_classes:
            raise DataError(
                f"the data has {len(data_classes)} classes ({_some(data_classes)}) but the model {num_classes}, "
                "and the checkpoint names none of its classes"
            )
        return None, None
    model_classes = list(model_classes)
    if data_classes == model_classes:
        return None, None
    index = {name: i for i, name in enumerate(model_classes)}
    unknown = [name for name in data_classes if name not in index]
    if len(unknown) == len(data_classes):
        if len(data_classes) == len(model_classes):
            return None, (
                f"note: the data's class folders ({_some(data_classes, 2)}) do not name the model's classes "
                f"({_some(model_classes, 2)}); labels follow the data's class order"
            )
        raise DataError(
            f"the data has {len(data_classes)} classes ({_some(data_classes)}), none of the model's "
            f"{len(model_classes)} ({_some(model_classes)}); pass --match-classes index to use the data's "
            "label numbers as they are"
        )
    if unknown:
        raise DataError(f"the data has {len(unknown)} classes the model does not have: {_some(unknown)}")
    mapping = [index[name] for name in data_classes]
    if len(data_classes) < len(model_classes):
        missing = [name for name in model_classes if name not in set(data_classes)]
        return mapping, (
            f"note: the data holds {len(data_classes)} of the model's {len(model_classes)} classes (not "
            f"{_some(missing)}); labels mapped by name, accuracy over the images of these classes"
        )
    return mapping, "note: the data lists the model's classes in another order; labels mapped by name"
