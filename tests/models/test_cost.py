import keras

from keras_reptile.models.cost import ModelCost


def test_costs_of_a_small_conv_net_by_hand():
    model = keras.Sequential(
        [
            keras.Input((4, 4, 1)),
            keras.layers.Conv2D(2, 3, padding="same"),  # 4x4x2 out: 2*16*9*1*2 = 576 FLOPs
            keras.layers.BatchNormalization(),
            keras.layers.Flatten(),
            keras.layers.Dense(3),  # 2*32*3 = 192 FLOPs
        ]
    )
    cost = ModelCost.of(model)
    assert cost.forward_flops == 576 + 192
    assert cost.activation_floats == 32 + 32 + 32 + 3
    assert cost.weight_floats == (9 * 2 + 2) + (2 + 2) + (32 * 3 + 3)
    assert cost.training_flops(10) == 3 * 768 * 10
