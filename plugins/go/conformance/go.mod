module runnel.dev/plugins/conformance

go 1.27
