fn main() {
    println!("kproxy");
}
