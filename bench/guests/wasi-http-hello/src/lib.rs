//! `http-hello`'s answers as a `wasi:http/proxy` component, for `wasmtime
//! serve`: `GET /` gets `Hello, world!`, any other path `404`. The bench
//! puts it beside `http-hello` on portcullis under the same `wrk` load
//! (`wasmtime serve` owns the HTTP/1.1 side; this is only the handler).

use std::io::Write as _;

use wasip2::http::types::{Fields, IncomingRequest, Method, OutgoingBody, OutgoingResponse, ResponseOutparam};

struct Hello;

impl wasip2::exports::http::incoming_handler::Guest for Hello {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let hello = matches!(request.method(), Method::Get) && request.path_with_query().as_deref() == Some("/");
        let (status, body): (u16, &[u8]) = if hello { (200, b"Hello, world!\n") } else { (404, b"Not found\n") };
        let headers = Fields::new();
        let _ = headers.set("content-type", &[b"text/plain".to_vec()]);
        let _ = headers.set("content-length", &[body.len().to_string().into_bytes()]);
        let response = OutgoingResponse::new(headers);
        let _ = response.set_status_code(status);
        let outgoing = response.body().expect("the body is taken once");
        ResponseOutparam::set(response_out, Ok(response));
        let mut stream = outgoing.write().expect("the stream is taken once");
        let _ = stream.write_all(body);
        let _ = stream.flush();
        drop(stream);
        let _ = OutgoingBody::finish(outgoing, None);
    }
}

wasip2::http::proxy::export!(Hello);
