use std::path::Path; pub fn x(_p:&Path){}
