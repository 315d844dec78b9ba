// The Runnel guest SDK for Go. Generated bindings go under internal/wit
// at build time (wit-bindgen go --pkg-name runnel.dev/runnel/internal/wit);
// go.bytecodealliance.org/pkg is the runtime support those bindings use,
// taken from the wit-bindgen-go crate of the same version (see README.md).
module runnel.dev/runnel

go 1.27

require go.bytecodealliance.org/pkg v0.4.0
