//! The generated bindings of the portcullis WIT (`wit/`), at the bottom of the
//! crate: only `sys::portcullis` uses them, and no public item shows them.
//!
//! The imports are generated once, here, for world `imports` (so their type
//! information is linked into every guest that uses them, export macro or not);
//! each exporting world has its own module that reuses them (`with`), so a
//! connection handle is one type whichever macro exports. A program with
//! callbacks invokes both export macros (world `program-with-callbacks` is
//! their union). Reachable as `portcullis_sdk::__bindings` for the export
//! macros and for tests that call the WIT directly; not part of the API.

#![allow(missing_docs)]

wit_bindgen::generate!({
    path: "../wit",
    world: "imports",
    generate_all,
});

pub mod service {
    wit_bindgen::generate!({
        path: "../wit",
        world: "service",
        pub_export_macro: true,
        export_macro_name: "__export_service",
        default_bindings_module: "portcullis_sdk::__bindings::service",
        with: {
            "portcullis:socket/types@0.1.0": crate::sys::portcullis::bindings::portcullis::socket::types,
            "portcullis:socket/tcp@0.1.0": crate::sys::portcullis::bindings::portcullis::socket::tcp,
            "portcullis:socket/udp@0.1.0": crate::sys::portcullis::bindings::portcullis::socket::udp,
        },
    });
}

pub mod program {
    wit_bindgen::generate!({
        path: "../wit",
        world: "program",
        pub_export_macro: true,
        export_macro_name: "__export_program",
        default_bindings_module: "portcullis_sdk::__bindings::program",
        with: {
            "portcullis:socket/types@0.1.0": crate::sys::portcullis::bindings::portcullis::socket::types,
            "portcullis:socket/tcp@0.1.0": crate::sys::portcullis::bindings::portcullis::socket::tcp,
            "portcullis:socket/udp@0.1.0": crate::sys::portcullis::bindings::portcullis::socket::udp,
        },
    });
}
