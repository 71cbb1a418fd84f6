//! Deep images, end to end, as root: an image of 127 layers builds (every
//! RUN step on an overlay of all the layers below it) and runs.

mod common;

use std::fmt::Write as _;

use common::{TestRoot, sandbox_available};
use serde_json::json;

#[test]
fn an_image_of_127_layers_builds_and_runs() {
    if !sandbox_available() {
        return;
    }
    let t = TestRoot::new();
    t.busybox_image("busybox", json!({"Cmd": ["sh"]}));
    let mut dockerfile = String::from("FROM busybox\n");
    for i in 1..=126 {
        // Each step also sees every earlier step's file.
        let prev = i - 1;
        writeln!(
            dockerfile,
            "RUN test -f /layers/{prev} -o {i} = 1 && mkdir -p /layers && echo {i} > /layers/{i}"
        )
        .unwrap();
    }
    let ctx = t.context(&[("Dockerfile", &dockerfile)]);
    t.build_ok(&ctx, &["-t", "deep"]);
    let image = t.inspect("deep");
    assert_eq!(image["Manifest"]["layers"].as_array().unwrap().len(), 127);
    assert_eq!(
        t.ok(&[
            "run",
            "deep",
            "sh",
            "-c",
            "ls /layers | wc -l; cat /layers/1 /layers/126"
        ]),
        "126\n1\n126\n"
    );
    // One more layer on top still works.
    let ctx = t.context(&[("Dockerfile", "FROM deep\nRUN cat /layers/126 > /top\n")]);
    t.build_ok(&ctx, &["-t", "deeper"]);
    assert_eq!(t.ok(&["run", "deeper", "cat", "/top"]), "126\n");
    t.check_store();
}
