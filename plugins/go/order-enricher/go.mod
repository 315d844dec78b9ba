module runnel.dev/plugins/order-enricher

go 1.27
