"""Serialization round-trip checks, as Keras' `run_class_serialization_test`.

A small copy rather than an import of private `keras.src` testing code.
"""

import json

import keras


def attributes(obj):
    # Python 3.11 creates a class's `__annotations__` on first access (Keras'
    # deserializer inspects the class), which is not an attribute we add.
    return set(dir(obj)) - {"__annotations__"}


def assert_serialization_round_trip(instance):
    """Two round trips: get_config/from_config, and serialize/JSON/deserialize.

    Checks the configs (as JSON) are equal and the rebuilt objects expose the
    same attributes (`set(dir(obj))`), before and after they are called.
    """
    cls = instance.__class__
    config = instance.get_config()
    config_json = json.dumps(config, sort_keys=True, indent=2)
    ref_dir = attributes(instance)

    # 1. get_config / from_config.
    revived = cls.from_config(config)
    revived_json = json.dumps(revived.get_config(), sort_keys=True, indent=2)
    assert config_json == revived_json
    assert ref_dir == attributes(revived)

    # 2. serialize / JSON / deserialize, without custom_objects.
    serialized = keras.saving.serialize_keras_object(instance)
    serialized_json = json.dumps(serialized, sort_keys=True, indent=2)
    revived = keras.saving.deserialize_keras_object(json.loads(serialized_json))
    assert type(revived) is cls
    revived_json = json.dumps(
        keras.saving.serialize_keras_object(revived), sort_keys=True, indent=2
    )
    assert serialized_json == revived_json
    assert ref_dir == attributes(revived), ref_dir ^ attributes(revived)
    return revived
