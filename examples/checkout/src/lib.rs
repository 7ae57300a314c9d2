#![doc = include_str!("../README.md")]

pub mod cli;
pub mod demo;
pub mod domain;
pub mod gateway;
pub mod processor;
pub mod saga;
pub mod shop;

pub use demo::{Backend, DemoConfig, DemoReport, Scenario};
pub use gateway::{Plan, SimulatedGateway};
pub use processor::PaymentProcessor;
pub use saga::{Checkout, CheckoutEvent, CheckoutState};
pub use shop::{OrderOutcome, Shop, ShopConfig};
