//! Test support beyond running the binary: a WebDriver client for headless-browser checks.

pub mod webdriver;
