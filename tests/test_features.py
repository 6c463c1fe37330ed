

@pytest.mark.slow
def test_onnx_file_gives_its_pooled_features(cifar_weights, cifar_test_dir, tmp_path):
    from resnetkit.backends.onnxruntime import save_onnx, to_onnx
    from resnetkit.core.loading import load_model

    classifier = load_model("cifar_resnet20")
    path = save_onnx(to_onnx(classifier.module, classifier.meta), tmp_path / "r20.onnx")
    files = cifar_files(cifar_test_dir, 3, ("dog", "truck"))
    onnx = extract_features(path, files)
    assert onnx.info["backend"] == "onnxruntime" and onnx.vectors.shape == (6, 64)
    assert np.allclose(onnx.vectors, extract_features(classifier, files).vectors, atol=1e-4)
    with pytest.raises(FeaturesUnavailableError, match="gives the pooled features only. --layer needs the PyTorch model"):
        extract_features(path, files, layer="layer2")
    with pytest.raises(FeaturesUnavailableError, match="run as stored, on onnxruntime"):
        extract_features(path, files, backend="openvino")
